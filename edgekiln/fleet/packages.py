"""Signed packages in the object store: what the fleet learns from one, where it keeps it,
and the presigned GET URLs that devices download it through.

The fleet reads a package's manifest (``edgekiln.artifact.signing.read_package_manifest``:
bounded, no signature check — the device verifies against its own trusted keys) to learn
its handle, version and profile, and hashes the whole file: devices get that sha256 and
size with the URL.  Packages are immutable: one object per (handle, version, sha256).

The object stores put the files and presign the GETs (:mod:`edgekiln.fleet.objects`).  S3
(SeaweedFS, MinIO, AWS) serves those GETs and their Range requests itself.  The local
directory store has no server of its own, so the fleet serves ``/v1/package-files/…``
behind an HMAC signature in the URL, as it does for the local store's PUTs, with Range
support (Starlette's FileResponse answers ``Range: bytes=N-`` with 206).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekiln.artifact.names import check_name
from edgekiln.artifact.package import sha256_file
from edgekiln.errors import UserError
from edgekiln.fleet import objects as objs

FILES_PATH = objs.GET_PATH
UPLOAD_PATH = "/v1/packages"


@dataclass(frozen=True)
class PackageFacts:
    """What the fleet keeps of one package file."""

    handle: str
    version: int
    profile: str
    backend: str
    key_id: str
    expires_at: float | None
    sha256: str
    size: int

    @property
    def object_key(self) -> str:
        return f"packages/{self.handle}/{self.version}/{self.sha256}.pkg"


def read_facts(path: Path) -> PackageFacts:
    """The manifest's handle, version, profile, backend, key id and expiry, and the file's
    sha256 and size; a malformed or oversized package raises the reader's one-line error."""
    from edgekiln.artifact.signing import read_package_manifest

    manifest = read_package_manifest(path)
    check_name(manifest.handle, "package handle")
    version = manifest.version
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= 2**53:
        raise UserError(f"package version {version!r} is not an integer from 1 to 2**53")
    return PackageFacts(
        handle=manifest.handle,
        version=version,
        profile=str(manifest.profile)[:128],
        backend=str(manifest.backend)[:64],
        key_id=str(manifest.key_id)[:64],
        expires_at=manifest.expires_at,
        sha256=sha256_file(path),
        size=path.stat().st_size,
    )


def local_file(objects: Any, key: str, expires: int, signature: str, now: float) -> Path | None:
    """The local store's file behind a presigned GET, or None when the URL does not verify
    (wrong signature, expired, not a package key) or the file is gone."""
    if not key.startswith("packages/") or not objects.verify(key, expires, signature, now, verb="GET"):
        return None
    path = objects.path(key)
    return path if path.is_file() else None

"""Signed packages in the object store: what the fleet learns from one, where it keeps it,
and the presigned GET URLs that devices download it through.

The fleet reads a package's manifest (``edgekiln.artifact.signing.read_package_manifest``:
bounded, no signature check — the device verifies against its own trusted keys) to learn
its handle, version and profile, and hashes the whole file: devices get that sha256 and
size with the URL.  Packages are immutable: one object per (handle, version, sha256).

S3 (SeaweedFS, MinIO, AWS) presigns GETs itself and serves Range requests.  The local
directory store has no server of its own, so the fleet serves ``/v1/package-files/…``
behind an HMAC signature in the URL, as it does for the local store's PUTs, with Range
support (Starlette's FileResponse answers ``Range: bytes=N-`` with 206).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekiln.artifact.names import check_name
from edgekiln.artifact.package import sha256_file
from edgekiln.errors import UserError
from edgekiln.fleet import objects as objs
from edgekiln.fleet.database import make_private_dirs

FILES_PATH = "/v1/package-files/"
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


def put_file(objects: Any, key: str, path: Path) -> None:
    """Store the file at ``path`` under ``key`` (whole or not at all)."""
    if isinstance(objects, objs.S3Objects):
        objects.client.upload_file(str(path), objects.bucket, key)
        return
    target = _local_path(objects, key)
    make_private_dirs(target.parent, 0o750)
    tmp = target.with_name(target.name + f".{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(path, "rb") as src, os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640), "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def presign_get(objects: Any, key: str, expires_in: int, base_url: str) -> str:
    """A URL that GETs ``key`` (with Range) for ``expires_in`` seconds, without a token."""
    if isinstance(objects, objs.S3Objects):
        return objects.client.generate_presigned_url(
            "get_object", Params={"Bucket": objects.bucket, "Key": key}, ExpiresIn=expires_in
        )
    expires = int(time.time()) + int(expires_in)
    query = urllib.parse.urlencode({"expires": expires, "signature": _signature(objects, key, expires)})
    return f"{base_url.rstrip('/')}{FILES_PATH}{urllib.parse.quote(key)}?{query}"


def local_file(objects: Any, key: str, expires: int, signature: str, now: float) -> Path | None:
    """The local store's file behind a presigned GET, or None when the URL does not verify
    (wrong signature, expired, not a package key) or the file is gone."""
    if not key.startswith("packages/") or now > expires:
        return None
    if not hmac.compare_digest(_signature(objects, key, expires), signature):
        return None
    path = _local_path(objects, key)
    return path if path.is_file() else None


def _signature(objects: Any, key: str, expires: int) -> str:
    # "GET" in the signed text: a PUT URL of the same key can never serve as a GET URL.
    return hmac.new(objects.secret, f"GET\n{key}\n{expires}".encode(), hashlib.sha256).hexdigest()


def _local_path(objects: Any, key: str) -> Path:
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UserError(f"bad object key {key[:100]!r}")
    return Path(objects.root).joinpath(*parts)

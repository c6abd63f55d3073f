"""Packing and safe unpacking of artifact archives (``.tar.gz``).

Packing writes to a temporary file beside the destination and renames it into place, so a
failed or interrupted compile never leaves a half-written artifact at the output path.

Unpacking trusts nothing in the archive and reads it once, as a stream: the manifest must be
the first member (bounded in size), every other member must be a regular, non-sparse file
listed in it with the same size and sha256, the manifest's sizes must add up to no more than
:class:`UnpackLimits` allows, and paths that are absolute, contain ``..`` or are links or
devices are refused before anything is written. The decompressed stream itself is bounded,
so that headers cannot grow without limit either.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekiln.artifact.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, FileEntry, Manifest
from edgekiln.artifact.paths import check_member_path
from edgekiln.errors import IntegrityError, UserError

_CHUNK = 1 << 20
_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)
# Headers, padding and the end-of-archive blocks around the members' data: per member a
# header block and padding, plus PAX headers, which tarfile reads into memory.
_HEADER_ALLOWANCE = 64 << 10
MAX_UNPACKED_ENV = "EDGEKILN_MAX_UNPACKED_BYTES"


@dataclass(frozen=True)
class UnpackLimits:
    """How much an artifact may unpack to. ``max_unpacked_bytes`` bounds the sum of the sizes
    the manifest lists (default 1 GiB; ``EDGEKILN_MAX_UNPACKED_BYTES`` raises it for a
    larger model); ``max_manifest_bytes`` bounds the manifest before it is parsed."""

    max_unpacked_bytes: int = 1 << 30
    max_manifest_bytes: int = MAX_MANIFEST_BYTES

    @classmethod
    def from_env(cls) -> UnpackLimits:
        value = bytes_from_env(MAX_UNPACKED_ENV)
        return cls() if value is None else cls(max_unpacked_bytes=value)


def bytes_from_env(name: str) -> int | None:
    """A size cap a user raised through the environment variable ``name``; None when unset."""
    text = os.environ.get(name)
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value <= 0:
        raise UserError(f"{name}={text[:40]!r} is not a positive number of bytes")
    return value


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def executable(name: str) -> bool:
    """Whether an artifact member is mapped or run: libraries, and programs under bin/
    (the native runtime's edgekiln-run)."""
    return name.endswith(".so") or name.startswith("bin/")


def file_entry(root: Path, relpath: str, role: str, cpu_features: tuple[str, ...] = ()) -> FileEntry:
    """Describe ``root/relpath`` for the manifest."""
    path = root / relpath
    return FileEntry(
        path=relpath, size=path.stat().st_size, sha256=sha256_file(path), role=role, cpu_features=cpu_features
    )


def pack(manifest: Manifest, root: Path, output: str | os.PathLike[str]) -> Path:
    """Write ``manifest`` and the files it lists (relative to ``root``) to ``output``.

    The archive is deterministic in member order and metadata, so the same inputs give
    the same bytes.  Returns the output path.
    """
    output = Path(output)
    if output.exists() and output.is_dir():
        raise UserError(f"output path {output} is a directory", hint="give a file name ending in .tar.gz")
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    try:
        with os.fdopen(fd, "wb") as raw:
            # mtime=0 in the gzip header keeps the bytes reproducible.
            import gzip

            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
                with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    _add_bytes(tar, MANIFEST_NAME, manifest.to_json().encode())
                    for entry in manifest.files:
                        _add_file(tar, entry.path, root / entry.path)
        os.replace(tmp_name, output)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return output


def _normalized(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = _normalized(tarfile.TarInfo(name))
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_file(tar: tarfile.TarFile, name: str, path: Path) -> None:
    info = _normalized(tarfile.TarInfo(name))
    info.size = path.stat().st_size
    info.mode = 0o755 if executable(name) else 0o644
    with open(path, "rb") as fh:
        tar.addfile(info, fh)


def _open(path: str | os.PathLike[str], limit: int) -> tuple[tarfile.TarFile, _Bounded]:
    """The artifact as a tar stream over its decompressed bytes, which stop at ``limit``
    (raised once the manifest says how much the members hold)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"artifact {path} does not exist")
    if not path.is_file():
        raise UserError(f"artifact {path} is not a file")
    bounded = _Bounded(gzip.open(path, "rb"), limit, path)
    try:
        return tarfile.open(fileobj=bounded, mode="r|"), bounded
    except _TAR_ERRORS as exc:
        bounded.close()
        raise IntegrityError(f"{path} is not an edgekiln artifact (.tar.gz): {exc}") from None


class _Bounded(io.RawIOBase):
    """A reader that refuses to go past ``limit`` decompressed bytes."""

    def __init__(self, raw: Any, limit: int, path: Path) -> None:
        super().__init__()
        self.raw, self.limit, self.path, self.count = raw, limit, path, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = self.limit - self.count + 1
        data = self.raw.read(min(size, self.limit - self.count + 1))
        self.count += len(data)
        if self.count > self.limit:
            raise IntegrityError(
                f"{self.path} unpacks to more than its manifest lists ({self.limit} bytes with headers)",
                hint="the artifact was altered or is not one edgekiln wrote",
            )
        return data

    def close(self) -> None:
        self.raw.close()
        super().close()


def read_manifest(path: str | os.PathLike[str], limits: UnpackLimits | None = None) -> Manifest:
    """Read and validate the manifest of an artifact; only the first member is decompressed."""
    limits = limits or UnpackLimits.from_env()
    tar, bounded = _open(path, limits.max_manifest_bytes + _HEADER_ALLOWANCE)
    with tar, bounded:
        return _first_manifest(tar, path, limits)[0]


def _first_manifest(tar: tarfile.TarFile, path: str | os.PathLike[str], limits: UnpackLimits) -> tuple[Manifest, bytes]:
    member = _next(tar, path)
    if member is None or member.name != MANIFEST_NAME:
        raise IntegrityError(f"{path} does not start with {MANIFEST_NAME}; it is not an edgekiln artifact")
    if not member.isreg() or member.issparse():
        raise IntegrityError(f"{MANIFEST_NAME} in {path} is not a regular file")
    if member.size > limits.max_manifest_bytes:
        raise IntegrityError(
            f"{MANIFEST_NAME} in {path} is {member.size} bytes, over the limit of {limits.max_manifest_bytes}"
        )
    data = _read_member(tar, member, path)
    return Manifest.from_json(data), data


def _next(tar: tarfile.TarFile, path: str | os.PathLike[str]) -> tarfile.TarInfo | None:
    try:
        return tar.next()
    except _TAR_ERRORS as exc:
        raise IntegrityError(f"{path} is damaged: {str(exc)[:200]}") from None


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, path: str | os.PathLike[str]) -> bytes:
    try:
        fh = tar.extractfile(member)
        assert fh is not None
        return fh.read()
    except _TAR_ERRORS as exc:
        raise IntegrityError(f"{path} is damaged: {str(exc)[:200]}") from None


def unpack(
    path: str | os.PathLike[str], destination: str | os.PathLike[str], limits: UnpackLimits | None = None
) -> Manifest:
    """Verify and extract an artifact into ``destination``, which must not exist yet.

    The archive is decompressed once. Every member is checked against the manifest before it
    is kept; on any failure the destination is removed again, so a bad artifact leaves
    nothing behind. ``limits`` defaults to :meth:`UnpackLimits.from_env`.
    """
    limits = limits or UnpackLimits.from_env()
    destination = Path(destination)
    if destination.exists():
        raise UserError(f"extraction directory {destination} already exists")
    tar, bounded = _open(path, limits.max_manifest_bytes + _HEADER_ALLOWANCE)
    with tar, bounded:
        manifest, raw_manifest = _first_manifest(tar, path, limits)
        expected = {f.path: f for f in manifest.files}
        total = sum(f.size for f in manifest.files)
        if total > limits.max_unpacked_bytes:
            raise IntegrityError(
                f"{path} lists {total} bytes of files, over the limit of {limits.max_unpacked_bytes}",
                hint=f"for a model this large, set {MAX_UNPACKED_ENV} to a higher byte count",
            )
        bounded.limit += total + 2048 * (len(expected) + 2)
        destination.mkdir(parents=True)
        try:
            seen: set[str] = set()
            while (member := _next(tar, path)) is not None:
                entry = _check_member(member, expected, seen)
                _extract_verified(tar, member, entry, destination, path)
            missing = sorted(set(expected) - seen)
            if missing:
                raise IntegrityError(f"artifact lacks files its manifest lists: {', '.join(missing[:10])}")
            # The bytes that were read and validated, so that inspect shows the member's own size.
            (destination / MANIFEST_NAME).write_bytes(raw_manifest)
        except BaseException:
            shutil.rmtree(destination, ignore_errors=True)
            raise
    return manifest


def _check_member(member: tarfile.TarInfo, expected: dict[str, FileEntry], seen: set[str]) -> FileEntry:
    if member.name == MANIFEST_NAME:
        raise IntegrityError(f"artifact holds {MANIFEST_NAME} twice")
    check_member_path(member.name)
    if not member.isreg() or member.issparse():
        raise IntegrityError(f"artifact member {member.name!r} is not a regular file")
    entry = expected.get(member.name)
    if entry is None:
        raise IntegrityError(f"artifact member {member.name!r} is not listed in the manifest")
    if member.name in seen:
        raise IntegrityError(f"artifact member {member.name!r} appears twice")
    if member.size != entry.size:
        raise IntegrityError(f"artifact member {member.name!r} is {member.size} bytes; the manifest says {entry.size}")
    seen.add(member.name)
    return entry


def _extract_verified(
    tar: tarfile.TarFile, member: tarfile.TarInfo, entry: FileEntry, root: Path, path: str | os.PathLike[str]
) -> None:
    target = root / member.name
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    try:
        src = tar.extractfile(member)
        assert src is not None
        with open(target, "wb") as out:
            for block in iter(lambda: src.read(_CHUNK), b""):
                digest.update(block)
                out.write(block)
    except _TAR_ERRORS as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # the destination's own failure (disk full), not the archive's
        raise IntegrityError(f"{path} is damaged: {str(exc)[:200]}") from None
    if digest.hexdigest() != entry.sha256:
        raise IntegrityError(
            f"artifact member {member.name!r} has sha256 {digest.hexdigest()[:16]}…; "
            f"the manifest says {entry.sha256[:16]}… (the artifact was changed after it was built)"
        )
    if executable(member.name):
        target.chmod(0o755)


def member_sizes(path: str | os.PathLike[str]) -> dict[str, int]:
    """Size of each member of a verified artifact (one pass: it is unpacked and checked)."""
    with tempfile.TemporaryDirectory(prefix="edgekiln-sizes-") as tmp:
        manifest = unpack(path, Path(tmp) / "a")
        return {
            MANIFEST_NAME: (Path(tmp) / "a" / MANIFEST_NAME).stat().st_size,
            **{f.path: f.size for f in manifest.files},
        }

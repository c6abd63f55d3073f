"""Packing and safe unpacking of artifact archives (``.tar.gz``).

Packing writes to a temporary file beside the destination and renames it into place, so a
failed or interrupted compile never leaves a half-written artifact at the output path.

Unpacking trusts nothing in the archive: the manifest is read first, every other member
must be a regular file listed in it with the same size and sha256, and paths that are
absolute, contain ``..`` or are links or devices are refused before anything is written.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Iterable

from edgekiln.artifact.manifest import MANIFEST_NAME, FileEntry, Manifest
from edgekiln.errors import IntegrityError, UserError

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entry(root: Path, relpath: str, role: str) -> FileEntry:
    """Describe ``root/relpath`` for the manifest."""
    path = root / relpath
    return FileEntry(path=relpath, size=path.stat().st_size, sha256=sha256_file(path), role=role)


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
    info.mode = 0o755 if name.endswith(".so") else 0o644
    with open(path, "rb") as fh:
        tar.addfile(info, fh)


def _open(path: str | os.PathLike[str]) -> tarfile.TarFile:
    path = Path(path)
    if not path.exists():
        raise UserError(f"artifact {path} does not exist")
    if not path.is_file():
        raise UserError(f"artifact {path} is not a file")
    try:
        return tarfile.open(path, mode="r:gz")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise IntegrityError(f"{path} is not an edgekiln artifact (.tar.gz): {exc}") from None


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and validate the manifest of an artifact without extracting anything else."""
    with _open(path) as tar:
        return _read_manifest(tar, path)


def _read_manifest(tar: tarfile.TarFile, path: str | os.PathLike[str]) -> Manifest:
    try:
        member = tar.getmember(MANIFEST_NAME)
    except KeyError:
        raise IntegrityError(f"{path} has no {MANIFEST_NAME}; it is not an edgekiln artifact") from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise IntegrityError(f"{path} is damaged: {exc}") from None
    if not member.isreg():
        raise IntegrityError(f"{MANIFEST_NAME} in {path} is not a regular file")
    fh = tar.extractfile(member)
    assert fh is not None
    return Manifest.from_json(fh.read())


def _check_member_name(name: str) -> None:
    if name.startswith("/") or "\\" in name:
        raise IntegrityError(f"artifact member {name!r} has an absolute or non-POSIX path")
    norm = posixpath.normpath(name)
    if norm != name or norm == ".." or norm.startswith("../") or "/../" in f"/{name}/":
        raise IntegrityError(f"artifact member {name!r} has a path that escapes the artifact")


def unpack(path: str | os.PathLike[str], destination: str | os.PathLike[str]) -> Manifest:
    """Verify and extract an artifact into ``destination``, which must not exist yet.

    Every member is checked against the manifest before it is kept; on any failure the
    destination is removed again, so a bad artifact leaves nothing behind.
    """
    destination = Path(destination)
    if destination.exists():
        raise UserError(f"extraction directory {destination} already exists")
    with _open(path) as tar:
        manifest = _read_manifest(tar, path)
        expected = {f.path: f for f in manifest.files}
        for entry in manifest.files:
            _check_member_name(entry.path)
        destination.mkdir(parents=True)
        try:
            seen: set[str] = set()
            for member in _members(tar, path):
                if member.name == MANIFEST_NAME:
                    continue
                _check_member_name(member.name)
                if not member.isreg():
                    raise IntegrityError(f"artifact member {member.name!r} is not a regular file")
                entry = expected.get(member.name)
                if entry is None:
                    raise IntegrityError(f"artifact member {member.name!r} is not listed in the manifest")
                if member.name in seen:
                    raise IntegrityError(f"artifact member {member.name!r} appears twice")
                seen.add(member.name)
                _extract_verified(tar, member, entry, destination)
            missing = sorted(set(expected) - seen)
            if missing:
                raise IntegrityError(f"artifact lacks files its manifest lists: {', '.join(missing)}")
            (destination / MANIFEST_NAME).write_text(manifest.to_json())
        except BaseException:
            shutil.rmtree(destination, ignore_errors=True)
            raise
    return manifest


def _members(tar: tarfile.TarFile, path: str | os.PathLike[str]) -> Iterable[tarfile.TarInfo]:
    try:
        yield from tar
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise IntegrityError(f"{path} is damaged: {exc}") from None


def _extract_verified(tar: tarfile.TarFile, member: tarfile.TarInfo, entry: FileEntry, root: Path) -> None:
    if member.size != entry.size:
        raise IntegrityError(
            f"artifact member {member.name!r} is {member.size} bytes; the manifest says {entry.size}"
        )
    target = root / member.name
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    src = tar.extractfile(member)
    assert src is not None
    with open(target, "wb") as out:
        for block in iter(lambda: src.read(_CHUNK), b""):
            digest.update(block)
            out.write(block)
    if digest.hexdigest() != entry.sha256:
        raise IntegrityError(
            f"artifact member {member.name!r} has sha256 {digest.hexdigest()[:16]}…; "
            f"the manifest says {entry.sha256[:16]}… (the artifact was changed after it was built)"
        )
    if member.name.endswith(".so"):
        target.chmod(0o755)


def member_sizes(path: str | os.PathLike[str]) -> dict[str, int]:
    """Size of each member, for ``inspect``."""
    with _open(path) as tar:
        return {m.name: m.size for m in _members(tar, path)}

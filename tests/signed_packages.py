"""Tools for tests that alter signed packages: read members with their offsets, write a tar
of chosen members, flip one bit."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path


def members(path: Path) -> dict[str, tuple[int, bytes]]:
    """name -> (offset of its data in the file, data)."""
    with tarfile.open(path, "r:") as tar:
        return {m.name: (m.offset_data, tar.extractfile(m).read()) for m in tar.getmembers()}


def retar(out: Path, items: list[tuple[str, bytes]]) -> Path:
    """A package-shaped tar of ``items`` (name, data), in that order."""
    with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in items:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


def flip(path: Path, offset: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))

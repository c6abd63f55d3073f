"""What machine code a library holds: its ELF machine, and the CUDA images in a fatbin.

``inspect`` shows these so that an engineer sees, before flashing, that the library is
AArch64 code or that a GPU artifact carries SASS for the right architecture.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

# e_machine values (ELF specification / Linux elf-em.h).
_MACHINES = {3: "x86", 40: "arm", 62: "x86_64", 183: "aarch64", 190: "cuda"}
_FATBIN_MAGIC = struct.pack("<I", 0xBA55ED50)
_FATBIN_KINDS = {1: "ptx", 2: "sass"}


@dataclass(frozen=True)
class CudaImage:
    """One entry of an embedded CUDA fatbin: SASS (a cubin) or PTX, for ``sm_<arch>``."""

    kind: str
    arch: str
    size: int


def elf_machine(path: str | Path) -> str | None:
    """The ELF machine of a file ("x86_64", "aarch64", "arm", …), or None if it is not ELF."""
    with open(path, "rb") as fh:
        header = fh.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    endian = "<" if header[5] == 1 else ">"
    (machine,) = struct.unpack_from(endian + "H", header, 18)
    return _MACHINES.get(machine, f"unknown({machine})")


def cuda_images(path: str | Path) -> list[CudaImage]:
    """The CUDA images of every fatbin embedded in a library (empty when there is none).

    Fatbin layout: a 16-byte header (magic, version, header size, payload size), then
    entries each with a header (kind, flags, header size, payload size, …, sm arch at
    offset 28) and their payload.
    """
    data = Path(path).read_bytes()
    images: list[CudaImage] = []
    start = data.find(_FATBIN_MAGIC)
    while start >= 0 and start + 16 <= len(data):
        _, _, header_size, payload = struct.unpack_from("<IHHQ", data, start)
        pos, end = start + header_size, min(len(data), start + header_size + payload)
        while pos + 32 <= end:
            kind, _, entry_header, size = struct.unpack_from("<HHIQ", data, pos)
            (arch,) = struct.unpack_from("<I", data, pos + 28)
            if entry_header == 0:
                break
            images.append(CudaImage(_FATBIN_KINDS.get(kind, f"kind{kind}"), f"sm_{arch}", size))
            pos += entry_header + size
        start = data.find(_FATBIN_MAGIC, max(end, start + 1))
    return images

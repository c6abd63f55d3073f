"""Tools for tests of signed packages: a tiny artifact to sign (no compiler needed), and for
tests that alter packages: read members with their offsets, write a tar of chosen members,
flip one bit."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path


def tiny_artifact(work: Path, data: bytes, profile: str = "generic/x86-64-avx2") -> Path:
    """Pack ``data`` as the one weights file of a tiny onnxruntime artifact in ``work``."""
    from edgekiln.artifact import FileEntry, Manifest, ModelInfo, RuntimeRequirements, TensorSpec, Validation, pack
    from edgekiln.artifact.package import sha256_file

    weights = work / "model.bin"
    weights.write_bytes(data)
    manifest = Manifest(
        model=ModelInfo("tiny", "1", "onnx", "0" * 64),
        profile=profile,
        backend="onnxruntime",
        backend_options={},
        target_triple="x86_64-linux-gnu",
        edgekiln_version="0",
        compiler={},
        runtime=RuntimeRequirements(arch="x86_64"),
        inputs=(TensorSpec("input", "float32", (1, 4)),),
        outputs=(TensorSpec("out", "float32", (1, 2)),),
        files=(FileEntry("model.bin", weights.stat().st_size, sha256_file(weights), "weights"),),
        validation=Validation(status="skipped", reason="test"),
    )
    return pack(manifest, work, work / "tiny.tar.gz")


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

"""Artifact packing and safe unpacking, on hand-made archives."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from edgekiln.artifact import (
    FileEntry,
    Manifest,
    ModelInfo,
    RuntimeRequirements,
    TensorSpec,
    Validation,
    file_entry,
    pack,
    read_manifest,
    unpack,
)
from edgekiln.errors import IntegrityError, UserError


def _manifest(root: Path, files: dict[str, bytes]) -> Manifest:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return Manifest(
        model=ModelInfo("m", "1", "onnx", "0" * 64),
        profile="generic/x86-64-avx2",
        backend="tvm",
        backend_options={},
        target_triple="x86_64-linux-gnu",
        edgekiln_version="0",
        compiler={"tvm": "0"},
        runtime=RuntimeRequirements(arch="x86_64"),
        inputs=(TensorSpec("input", "float32", (1, 3, 4, 4)),),
        outputs=(TensorSpec("out", "float32", (1, 2)),),
        files=tuple(file_entry(root, name, "model-library") for name in sorted(files)),
        validation=Validation(status="skipped", reason="test"),
    )


def _raw_archive(path: Path, manifest: dict, members: list[tarfile.TarInfo], payloads: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        data = json.dumps(manifest).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for member in members:
            tar.addfile(member, io.BytesIO(payloads.get(member.name, b"")) if member.isreg() else None)


def test_round_trip_is_reproducible_and_verified(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    manifest = _manifest(src, {"lib/model.so": b"\x7fELF" + b"x" * 100, "labels.txt": b"a\nb\n"})
    first = pack(manifest, src, tmp_path / "a.tar.gz")
    second = pack(manifest, src, tmp_path / "b.tar.gz")
    assert first.read_bytes() == second.read_bytes()
    assert read_manifest(first) == manifest
    got = unpack(first, tmp_path / "out")
    assert got == manifest
    assert (tmp_path / "out" / "lib" / "model.so").read_bytes() == b"\x7fELF" + b"x" * 100
    assert not list(tmp_path.glob(".*.tmp"))


def test_changed_member_is_refused_and_nothing_is_left(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    manifest = _manifest(src, {"lib/model.so": b"original"})
    # Same size, other bytes: only the sha256 can tell.
    (src / "lib" / "model.so").write_bytes(b"tampered")
    path = pack(manifest, src, tmp_path / "a.tar.gz")
    with pytest.raises(IntegrityError, match="sha256"):
        unpack(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_member_missing_from_manifest_is_refused(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    manifest = _manifest(src, {"lib/model.so": b"abc"})
    extra = tarfile.TarInfo("evil.so")
    extra.size = 3
    model = tarfile.TarInfo("lib/model.so")
    model.size = 3
    _raw_archive(tmp_path / "a.tar.gz", manifest.to_dict(), [model, extra], {"lib/model.so": b"abc", "evil.so": b"xyz"})
    with pytest.raises(IntegrityError, match="not listed"):
        unpack(tmp_path / "a.tar.gz", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["../escape.so", "/etc/passwd", "lib/../../x"])
def test_paths_that_escape_are_refused(tmp_path, name):
    src = tmp_path / "src"
    src.mkdir()
    manifest = _manifest(src, {"lib/model.so": b"abc"}).to_dict()
    manifest["files"].append({"path": name, "size": 3, "sha256": "0" * 64, "role": "weights"})
    bad = tarfile.TarInfo(name)
    bad.size = 3
    _raw_archive(tmp_path / "a.tar.gz", manifest, [bad], {name: b"abc"})
    with pytest.raises(IntegrityError, match="path"):
        unpack(tmp_path / "a.tar.gz", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "escape.so").exists()


def test_symlink_member_is_refused(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    manifest = _manifest(src, {"lib/model.so": b"abc"})
    link = tarfile.TarInfo("lib/model.so")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    _raw_archive(tmp_path / "a.tar.gz", manifest.to_dict(), [link], {})
    with pytest.raises(IntegrityError, match="not a regular file"):
        unpack(tmp_path / "a.tar.gz", tmp_path / "out")


def test_missing_listed_file_and_foreign_archives(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    manifest = _manifest(src, {"lib/model.so": b"abc"})
    _raw_archive(tmp_path / "a.tar.gz", manifest.to_dict(), [], {})
    with pytest.raises(IntegrityError, match="lacks files"):
        unpack(tmp_path / "a.tar.gz", tmp_path / "out")
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(IntegrityError, match="not an edgekiln artifact"):
        read_manifest(tmp_path / "junk.tar.gz")
    with pytest.raises(UserError, match="does not exist"):
        read_manifest(tmp_path / "nope.tar.gz")


def test_manifest_validation_names_the_field(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    data = _manifest(src, {"lib/model.so": b"abc"}).to_dict()
    del data["target_triple"]
    with pytest.raises(IntegrityError, match="target_triple"):
        Manifest.from_dict(data)
    data = _manifest(src, {"lib/model.so": b"abc"}).to_dict()
    data["schema_version"] = 99
    with pytest.raises(IntegrityError, match="schema version 99"):
        Manifest.from_dict(data)
    assert FileEntry("a", 1, "x", "r") == FileEntry("a", 1, "x", "r")


def test_failed_pack_leaves_no_output(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    manifest = _manifest(src, {"lib/model.so": b"abc"})
    (src / "lib" / "model.so").unlink()
    with pytest.raises(FileNotFoundError):
        pack(manifest, src, tmp_path / "out.tar.gz")
    assert list(tmp_path.iterdir()) == [src]


def test_libraries_and_bin_programs_stay_executable(tmp_path):
    import dataclasses

    from edgekiln.artifact import Manifest
    from edgekiln.artifact.package import executable, file_entry, pack, unpack
    from tests.data.hostile import artifacts as hostile

    assert executable("lib/model.so") and executable("bin/edgekiln-run")
    assert not executable("labels.txt") and not executable("include/edgekiln/dlr.h")
    root = tmp_path / "a"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "edgekiln-run").write_bytes(b"run")
    (root / "labels.txt").write_text("cat\n")
    # As JSON reads them back: lists, not the dataclass's tuples.
    files = [
        json.loads(json.dumps(dataclasses.asdict(file_entry(root, n, "x")))) for n in ("bin/edgekiln-run", "labels.txt")
    ]
    manifest = Manifest.from_dict({**hostile.manifest({}), "files": files})
    unpack(pack(manifest, root, tmp_path / "a.tar.gz"), tmp_path / "out")
    assert (tmp_path / "out" / "bin" / "edgekiln-run").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "out" / "labels.txt").stat().st_mode & 0o111 == 0

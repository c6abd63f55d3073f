"""Hostile artifacts and manifests: each one is refused with one IntegrityError, before
anything is written, and nothing is left behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edgekiln.artifact import (
    Manifest,
    UnpackLimits,
    check_member_path,
    read_labels,
    read_manifest,
    resolve_member,
    unpack,
)
from edgekiln.errors import IntegrityError, UserError
from tests.data.hostile import artifacts as hostile


def _refused(path: Path, out: Path, match: str, limits: UnpackLimits | None = None) -> None:
    with pytest.raises(IntegrityError, match=match):
        unpack(path, out, limits)
    assert not out.exists()


@pytest.mark.parametrize("labels", ["/etc/passwd", "/dev/zero", "../labels.txt", "labels.txt/../../x", "unlisted.txt"])
def test_labels_outside_the_artifact_or_unlisted_are_refused(tmp_path, labels):
    path = hostile.plain(tmp_path / "a.tar.gz", {"model.onnx": b"onnx"}, labels=labels)
    with pytest.raises(IntegrityError, match="labels|artifact path"):
        read_manifest(path)
    _refused(path, tmp_path / "out", "labels|artifact path")


@pytest.mark.parametrize("name", ["/etc/passwd", "../model.so", "a/../../model.so", "a//b", "./a", "a\\b", ""])
def test_member_paths_outside_the_artifact_are_refused_by_the_one_check(name):
    with pytest.raises(IntegrityError):
        check_member_path(name)


def test_a_sparse_member_is_refused_before_it_is_written(tmp_path):
    _refused(hostile.sparse_member(tmp_path / "a.tar.gz"), tmp_path / "out", "not a regular file|over the limit")
    # Even with a limit that lets 4 GiB through, a sparse member is not a regular file.
    _refused(
        hostile.sparse_member(tmp_path / "b.tar.gz"),
        tmp_path / "out",
        "not a regular file",
        UnpackLimits(max_unpacked_bytes=8 << 30),
    )


def test_listed_sizes_over_the_limit_are_refused_before_extraction(tmp_path):
    _refused(hostile.claimed_member(tmp_path / "a.tar.gz"), tmp_path / "out", "over the limit of 1073741824")
    small = hostile.plain(tmp_path / "b.tar.gz", {"w.bin": b"\0" * 4096})
    _refused(small, tmp_path / "out", "4096 bytes of files, over the limit", UnpackLimits(max_unpacked_bytes=4095))
    assert unpack(small, tmp_path / "ok", UnpackLimits(max_unpacked_bytes=4096)).files[0].size == 4096


def test_the_limit_comes_from_the_environment(tmp_path, monkeypatch):
    small = hostile.plain(tmp_path / "a.tar.gz", {"w.bin": b"\0" * 100})
    monkeypatch.setenv("EDGEKILN_MAX_UNPACKED_BYTES", "99")
    with pytest.raises(IntegrityError, match="over the limit of 99") as refused:
        unpack(small, tmp_path / "out")
    assert "set EDGEKILN_MAX_UNPACKED_BYTES" in refused.value.one_line()
    monkeypatch.setenv("EDGEKILN_MAX_UNPACKED_BYTES", "100")
    assert unpack(small, tmp_path / "out").files[0].size == 100
    monkeypatch.setenv("EDGEKILN_MAX_UNPACKED_BYTES", "lots")
    with pytest.raises(UserError, match="not a positive number"):
        unpack(small, tmp_path / "out2")


def test_a_member_larger_than_listed_is_refused_before_it_is_written(tmp_path):
    listed = hostile.manifest({"w.bin": b"abc"})
    path = hostile.archive(
        tmp_path / "a.tar.gz", [hostile.manifest_member(listed), hostile.regular("w.bin", b"abcd" * 1000)]
    )
    _refused(path, tmp_path / "out", "4000 bytes; the manifest says 3")


def test_a_huge_manifest_is_refused_from_its_header(tmp_path):
    big = b" " * (2 << 20) + json.dumps(hostile.manifest({})).encode()
    path = hostile.archive(tmp_path / "a.tar.gz", [hostile.manifest_member(big)])
    with pytest.raises(IntegrityError, match="over the limit of 1048576"):
        read_manifest(path)
    with pytest.raises(IntegrityError, match="over the limit"):
        Manifest.from_json(big)


def test_a_huge_header_stops_at_the_stream_bound(tmp_path):
    with pytest.raises(IntegrityError, match="unpacks to more than"):
        read_manifest(hostile.huge_pax_header(tmp_path / "a.tar.gz"))


def test_duplicate_or_late_manifests_are_refused(tmp_path):
    files = {"w.bin": b"abc"}
    first, second = hostile.manifest(files), hostile.manifest(files, profile="other")
    dup = hostile.archive(
        tmp_path / "a.tar.gz",
        [hostile.manifest_member(first), hostile.regular("w.bin", b"abc"), hostile.manifest_member(second)],
    )
    _refused(dup, tmp_path / "out", "manifest.json twice")
    late = hostile.archive(tmp_path / "b.tar.gz", [hostile.regular("w.bin", b"abc"), hostile.manifest_member(first)])
    with pytest.raises(IntegrityError, match="does not start with manifest.json"):
        read_manifest(late)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (hostile.deep_json(), "not valid JSON"),
        (hostile.long_integer(), "not valid JSON"),
        (b'{"schema_version": true}', "schema version"),
    ],
)
def test_malformed_json_is_an_integrity_error(text, match):
    with pytest.raises(IntegrityError, match=match):
        Manifest.from_json(text)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"inputs": 5}, "inputs must be a list"),
        ({"inputs": [{"name": "x", "dtype": "float32", "shape": "1x3"}]}, "TensorSpec.shape"),
        ({"inputs": [{"name": "x", "dtype": "float32", "shape": [1, 3, 100000, 100000]}]}, "2\\^31 elements"),
        ({"inputs": [{"name": "x", "dtype": "float32", "shape": [1, True]}]}, "TensorSpec.shape"),
        ({"files": [{"path": 1, "size": 1, "sha256": "0" * 64, "role": "w"}]}, "FileEntry.path"),
        ({"files": [{"path": "w", "size": -1, "sha256": "0" * 64, "role": "w"}]}, "negative size"),
        ({"files": [{"path": "w", "size": 1, "sha256": "zz", "role": "w"}]}, "64 hex digits"),
        ({"model": []}, "ModelInfo must be an object"),
        ({"profile": {"a": 1}}, "profile must be a string"),
        ({"labels": 7}, "labels must be a string"),
        ({"preprocessing": [1]}, "preprocessing must be an object"),
        ({"runtime": {"arch": "x86_64", "python_packages": "numpy"}}, "python_packages"),
        ({"validation": {"status": "passed", "samples": "3"}}, "Validation.samples"),
    ],
)
def test_wrong_types_name_the_field(change, field):
    with pytest.raises(IntegrityError, match=field):
        Manifest.from_dict(hostile.manifest({}, **change))


def _extracted(tmp_path: Path, files: dict[str, bytes], **fields) -> Path:
    root = tmp_path / "artifact"
    root.mkdir()
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "manifest.json").write_text(json.dumps(hostile.manifest(files, **fields)))
    return root


def test_an_extracted_directory_gets_the_same_checks(tmp_path):
    from edgekiln.runtime.model import Model

    outside = tmp_path / "model.so"
    outside.write_bytes(b"\x7fELF")
    root = _extracted(tmp_path, {})
    data = hostile.manifest({"../model.so": b"\x7fELF"})
    (root / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(IntegrityError, match="escapes the artifact"):
        Model(root)
    data = hostile.manifest({"model.so": b"x"}, labels="/etc/passwd")
    (root / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(IntegrityError, match="labels"):
        Model(root)


def test_a_symlink_in_an_extracted_directory_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "labels.txt").write_text("root:x:0:0\n")
    root = tmp_path / "artifact"
    root.mkdir()
    os.symlink(tmp_path / "elsewhere", root / "sub")
    with pytest.raises(IntegrityError, match="symlink"):
        resolve_member(root, "sub/labels.txt")
    with pytest.raises(IntegrityError, match="symlink"):
        read_labels(root, "sub/labels.txt")


def test_labels_are_read_bounded_and_as_text(tmp_path):
    (tmp_path / "labels.txt").write_bytes(b"# classes\ncat\n\ndog\n")
    assert read_labels(tmp_path, "labels.txt") == ["cat", "dog"]
    (tmp_path / "big.txt").write_bytes(b"a\n" * (3 << 20))
    with pytest.raises(IntegrityError, match="over 4 MiB"):
        read_labels(tmp_path, "big.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(IntegrityError, match="not UTF-8"):
        read_labels(tmp_path, "bin.txt")

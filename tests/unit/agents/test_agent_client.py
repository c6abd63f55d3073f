"""What the client reads of an artifact on the device: only through the artifact's checks."""

from __future__ import annotations

import dataclasses
import json

import pytest

from edgekiln.agents.client import read_artifact_info
from edgekiln.artifact import MANIFEST_NAME
from edgekiln.artifact.package import file_entry, pack
from edgekiln.errors import IntegrityError
from tests.unit.agents.fakes import fake_manifest


def artifact(tmp_path, labels: str | None, files: dict[str, bytes]):
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    manifest = dataclasses.replace(
        fake_manifest(), labels=labels, files=tuple(file_entry(src, n, "labels") for n in files)
    )
    return manifest, src


def test_labels_of_a_packed_artifact(tmp_path):
    manifest, src = artifact(tmp_path, "labels.txt", {"labels.txt": b"# classes\ncat\ndog\n"})
    path = pack(manifest, src, tmp_path / "a.tar.gz")
    read, labels = read_artifact_info(str(path))
    assert read.model.version == "7" and labels == ["cat", "dog"]


@pytest.mark.parametrize("labels", ["/etc/passwd", "../labels.txt", "other.txt"])
def test_labels_that_are_not_a_listed_file_are_refused(tmp_path, labels):
    manifest, src = artifact(tmp_path, labels, {"labels.txt": b"cat\n"})
    path = pack(manifest, src, tmp_path / "a.tar.gz")
    with pytest.raises(IntegrityError, match="labels"):
        read_artifact_info(str(path))
    (src / MANIFEST_NAME).write_text(manifest.to_json())
    with pytest.raises(IntegrityError, match="labels"):
        read_artifact_info(str(src))


def test_an_extracted_artifact_whose_listed_labels_escape_it_is_refused(tmp_path):
    (tmp_path / "outside.txt").write_text("root:x:0:0\n")
    manifest, src = artifact(tmp_path, "labels.txt", {"labels.txt": b"cat\n"})
    data = json.loads(manifest.to_json())
    data["labels"] = data["files"][0]["path"] = "../outside.txt"
    entry = file_entry(tmp_path, "outside.txt", "labels")
    data["files"][0].update(size=entry.size, sha256=entry.sha256)
    (src / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(IntegrityError, match="inside"):
        read_artifact_info(str(src))


def test_changed_labels_in_an_extracted_artifact_are_refused(tmp_path):
    manifest, src = artifact(tmp_path, "labels.txt", {"labels.txt": b"cat\n"})
    (src / MANIFEST_NAME).write_text(manifest.to_json())
    assert read_artifact_info(str(src))[1] == ["cat"]
    (src / "labels.txt").write_text("dog\n")
    with pytest.raises(IntegrityError, match="differs"):
        read_artifact_info(str(src))

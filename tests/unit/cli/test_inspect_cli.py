"""``edgekiln inspect`` through the real entry point: one decompression, and hostile
artifacts as one-line errors."""

from __future__ import annotations

import gzip
import json

import pytest

from edgekiln.artifact import package
from edgekiln.cli import main as cli_main
from tests.data.hostile import artifacts as hostile


def test_inspect_decompresses_the_artifact_once(tmp_path, capsys, monkeypatch):
    path = hostile.plain(
        tmp_path / "a.tar.gz", {"model.onnx": b"onnx" * 100, "labels.txt": b"cat\ndog\n"}, labels="labels.txt"
    )
    opened, real_open = [], gzip.open
    monkeypatch.setattr(package.gzip, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    assert cli_main.main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert len(opened) == 1
    assert info["archive"]["members"]["model.onnx"] == 400
    assert info["archive"]["members"]["manifest.json"] == len(
        json.dumps(hostile.manifest({"model.onnx": b"onnx" * 100, "labels.txt": b"cat\ndog\n"}, labels="labels.txt"))
    )


@pytest.mark.parametrize("make", [hostile.sparse_member, hostile.claimed_member, hostile.huge_pax_header])
def test_inspect_refuses_hostile_artifacts_in_one_line(tmp_path, capsys, make):
    code = cli_main.main(["inspect", str(make(tmp_path / "a.tar.gz"))])
    out, err = capsys.readouterr()
    assert code == 6 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err

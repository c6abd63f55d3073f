"""The stage types: the imported source saves and loads itself."""

from __future__ import annotations

import pytest

from edgekiln.compile.frontends import import_model
from edgekiln.compile.stages import SourceModel
from edgekiln.errors import UserError


def test_source_model_round_trips_through_its_json(tiny_model, tmp_path):
    source = import_model(tiny_model, tmp_path / "work")
    saved = source.save()
    assert saved == source.path.parent / "source.json"
    again = SourceModel.load(saved)
    assert again == source
    assert again.inputs[0].shape == (1, 8) and again.stats["macs"] == 32


def test_loading_a_source_whose_onnx_file_is_gone_fails(tiny_model, tmp_path):
    source = import_model(tiny_model, tmp_path / "work")
    saved = source.save(tmp_path / "s.json")
    source.path.unlink()
    with pytest.raises(UserError, match="does not exist"):
        SourceModel.load(saved)
    (tmp_path / "bad.json").write_text('{"name": "x", "colour": 1}')
    with pytest.raises(UserError, match="is not a saved source model"):
        SourceModel.load(tmp_path / "bad.json")

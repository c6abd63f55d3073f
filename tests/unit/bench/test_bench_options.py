"""Typed options of a benchmark run."""

from __future__ import annotations

import pytest

from edgekiln.bench.harness import BenchOptions
from edgekiln.errors import UserError


def test_defaults_and_round_trip():
    options = BenchOptions()
    assert options.baselines == ("onnxruntime",) and options.scenario == "single-stream"
    assert BenchOptions.from_dict(options.to_dict()) == options
    assert BenchOptions(baselines=("none",)).baselines == ()
    assert BenchOptions(baselines=("openvino", "openvino", "torch")).baselines == ("openvino", "torch")


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"runs": 3, "duration_s": 2.0}, "not both"),
        ({"runs": 0}, "--runs"),
        ({"duration_s": -1.0}, "--duration"),
        ({"scenario": "server"}, "scenario"),
        ({"baselines": ("tensorrt",)}, "unknown baseline"),
        ({"baselines": ("none", "onnxruntime")}, "cannot be combined"),
        ({"batch": 0}, "--batch"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_bad_options_are_user_errors(kwargs, needle):
    with pytest.raises(UserError, match=needle):
        BenchOptions(**kwargs)
    with pytest.raises(UserError, match="unknown bench options"):
        BenchOptions.from_dict({"rnus": 3})

"""Input shapes and --input-config values that would exhaust memory or the parser are
refused up front, in one line."""

from __future__ import annotations

import pytest

from edgekiln.compile.frontends import check_input_sizes, import_model, parse_input_config, parse_input_shape
from edgekiln.errors import UserError


@pytest.mark.parametrize(
    "shape",
    [
        parse_input_config("[1, 3, 100000, 100000]"),
        parse_input_config('{"data": [1, 3, 100000, 100000]}'),
        parse_input_shape(["1,3,100000,100000"]),
        parse_input_shape(["x:1,1,1,1,1,1,1,1,1"]),
    ],
)
def test_a_huge_input_shape_is_refused_before_any_work(tmp_path, shape):
    with pytest.raises(UserError, match="over the limit of 2\\^28 elements"):
        import_model("zoo:resnet18", tmp_path / "work", input_shape=shape)
    assert not (tmp_path / "work").exists()


def test_the_limit_lets_real_inputs_through():
    check_input_sizes({"a": [1, 3, 224, 224], "b": [64, 3, 512, 512]})
    check_input_sizes([1, 1 << 28])
    with pytest.raises(UserError):
        check_input_sizes([2, 1 << 28])


@pytest.mark.parametrize("text", ["[" + "9" * 5000 + "]", "[" * 100_000 + "]" * 100_000])
def test_input_config_json_that_python_cannot_parse_is_a_user_error(text):
    with pytest.raises(UserError, match="--input-config is not a usable JSON value"):
        parse_input_config(text)

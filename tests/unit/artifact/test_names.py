"""The shared name rule that the agent and the fleet both apply."""

from __future__ import annotations

import pytest

from edgekiln.artifact.names import MAX_NAME_LENGTH, check_name, is_valid_name
from edgekiln.errors import UserError, first_line


@pytest.mark.parametrize("name", ["a", "resnet18", "model-v2", "a--b", "A" * MAX_NAME_LENGTH])
def test_valid_names(name):
    assert is_valid_name(name)
    assert check_name(name, "model name") == name


@pytest.mark.parametrize(
    "name", ["", "-a", "a-", "a_b", "a/b", "../a", "a\n", "a" * (MAX_NAME_LENGTH + 1), "a" * 200, None, 5, "é"]
)
def test_invalid_names(name):
    assert not is_valid_name(name)
    with pytest.raises(UserError, match="model name"):
        check_name(name, "model name")


def test_first_line_picks_first_or_last_line():
    exc = RuntimeError("\n  first\nmiddle\n last  \n")
    assert first_line(exc) == "first"
    assert first_line(exc, last=True) == "last"
    assert first_line(ValueError("")) == "ValueError"
    assert len(first_line(ValueError("x" * 1000), limit=50)) == 50

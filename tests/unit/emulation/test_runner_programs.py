"""How the emulated board resolves program names, without starting qemu."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from edgekiln.emulation import runner
from edgekiln.errors import UserError


def test_edgekiln_run_before_build_runtime_names_the_command(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGEKILN_CACHE", str(tmp_path))  # no native runtime built here
    board = SimpleNamespace(arch="armv7l", profile="raspberry-pi/3b-armv7l")
    with pytest.raises(UserError) as caught:
        runner._program(board, "edgekiln-run", tmp_path)
    assert "edgekiln-run has not been built for armv7l" in caught.value.one_line()
    assert "edgekiln build-runtime --target raspberry-pi/3b-armv7l" in caught.value.one_line()

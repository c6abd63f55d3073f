"""The profile's toolchain: which compiler and tools, and what to install when one lacks."""

from __future__ import annotations

import pytest

from edgekiln.compile.toolchain import find_tools
from edgekiln.device_profiles import get_profile
from edgekiln.errors import DependencyError


def test_tools_come_from_the_profiles_cross_toolchain(monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    assert find_tools(get_profile("rasp4b"), "gcc", "strip") == (
        "aarch64-linux-gnu-g++",
        "aarch64-linux-gnu-gcc",
        "aarch64-linux-gnu-strip",
    )
    assert find_tools(get_profile("x86_64"), "gcc") == ("g++", "gcc")  # the host's own


def test_a_missing_tool_is_named_with_the_package_to_install(monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None if name.endswith("strip") else name)
    assert find_tools(get_profile("rasp3b"), "gcc")[1] == "arm-linux-gnueabihf-gcc"
    with pytest.raises(DependencyError, match="raspberry-pi/3b-armv7l lacks arm-linux-gnueabihf-strip") as refused:
        find_tools(get_profile("rasp3b"), "gcc", "strip")
    assert "apt-get install g++-arm-linux-gnueabihf" in refused.value.one_line()
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(DependencyError, match="lacks g\\+\\+") as refused:
        find_tools(get_profile("x86_64"))
    assert "apt-get install g++" in refused.value.one_line()

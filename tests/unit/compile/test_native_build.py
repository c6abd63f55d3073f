"""The native runtime's build driver and cache, without compiling anything."""

from __future__ import annotations

import json

import pytest

from edgekiln.compile import native
from edgekiln.compile.api import CompileOptions
from edgekiln.device_profiles import get_profile
from edgekiln.errors import UserError
from edgekiln.runtime import native as cache


def test_native_runtime_needs_the_tvm_backend():
    with pytest.raises(UserError, match="tvm artifacts only.*onnxruntime"):
        CompileOptions(backend="onnxruntime", native_runtime=True)
    with pytest.raises(UserError, match="backend is auto") as refused:
        CompileOptions(native_runtime=True)
    assert "add --backend tvm" in refused.value.one_line()
    assert CompileOptions(backend="tvm", native_runtime=True).native_runtime


def test_build_options_and_profiles_are_checked_before_building():
    with pytest.raises(UserError, match="at least 1"):
        native.BuildOptions(jobs=0)
    with pytest.raises(UserError, match="runs on the CPU"):
        native.ensure_native_runtime(get_profile("h200"))


def test_the_version_names_edgekiln_tvm_and_the_sources():
    from edgekiln import __version__

    version = cache.native_version()
    assert version.startswith(f"{__version__}+tvm0.27") and version.endswith(cache.source_digest())
    assert len(cache.source_digest()) == 10
    assert (cache.SOURCE_DIR / "include" / "edgekiln" / "dlr.h").is_file()
    assert (cache.SOURCE_DIR / "CMakeLists.txt").is_file()


def test_a_build_is_found_in_the_cache_only_when_complete(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKILN_CACHE", str(tmp_path))
    assert cache.find_native_runtime("armv7l") is None
    root = cache.build_dir("armv7l")
    (root / "bin").mkdir(parents=True)
    assert cache.find_native_runtime("armv7l") is None  # no build.json: unfinished
    (root / cache.BUILD_INFO).write_text(json.dumps({"arch": "armv7l"}))
    found = cache.find_native_runtime("armv7l")
    assert found is not None and found.runner == root / "bin" / "edgekiln-run"
    assert found.library == root / "lib" / "libedgekiln.so"


def test_the_emulated_board_runs_the_runner_built_for_it(tmp_path, monkeypatch):
    from edgekiln.emulation import runner

    monkeypatch.setenv("EDGEKILN_CACHE", str(tmp_path))
    root = cache.build_dir("armv7l")
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "edgekiln-run").write_bytes(b"\x7fELF")
    (root / cache.BUILD_INFO).write_text("{}")

    class Sysroot:
        arch, profile = "armv7l", "raspberry-pi/3b-armv7l"

        def host_path(self, path):
            return tmp_path / "sysroot" / path.lstrip("/")

    assert runner._program(Sysroot(), "edgekiln-run", tmp_path) == [str(root / "bin" / "edgekiln-run")]


def test_required_glibc_is_the_newest_symbol_version(tmp_path):
    lib = tmp_path / "lib.so"
    lib.write_bytes(b"\0GLIBC_2.17\0GLIBC_2.36\0GLIBC_2.4\0GLIBC_PRIVATE\0")
    assert native.required_glibc(lib) == "2.36"
    lib.write_bytes(b"no versions")
    assert native.required_glibc(lib) is None


def test_a_missing_toolchain_says_what_to_install(monkeypatch):
    from edgekiln.errors import DependencyError

    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    with pytest.raises(DependencyError, match="lacks arm-linux-gnueabihf-g\\+\\+") as refused:
        native._compilers(get_profile("rasp3b"))
    assert "apt-get install g++-arm-linux-gnueabihf" in refused.value.one_line()


def test_an_object_tree_configured_for_other_sources_is_dropped(tmp_path):
    from edgekiln.compile.native import _forget_other_checkouts

    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for work, home in ((ours, cache.SOURCE_DIR), (theirs, tmp_path / "elsewhere" / "native")):
        work.mkdir()
        (work / "CMakeCache.txt").write_text(f"CMAKE_HOME_DIRECTORY:INTERNAL={home}\nOTHER:STRING=x\n")
        (work / "lib.o").write_bytes(b"object")
    _forget_other_checkouts(ours)
    _forget_other_checkouts(theirs)
    _forget_other_checkouts(tmp_path / "never-built")
    assert (ours / "lib.o").read_bytes() == b"object"  # kept: a rebuild compiles only what changed
    assert not theirs.exists()

"""Host facts and the progress reporter."""

from __future__ import annotations

import io
from types import SimpleNamespace

from edgekiln.execute import host
from edgekiln.execute.progress import ConsoleProgress, NullProgress


def _profile(arch, cuda=False):
    return SimpleNamespace(cpu=SimpleNamespace(arch=arch), is_cuda=cuda)


def test_cannot_execute_names_the_architecture_and_missing_cpu_features(monkeypatch):
    me = host.host_info()
    other = "aarch64" if me.arch != "aarch64" else "x86_64"
    assert host.cannot_execute(_profile(other)) == f"this host is {me.arch}; the profile's CPU is {other}"
    assert host.cannot_execute(_profile(me.arch)) is None
    if me.cpu_features:
        assert host.cannot_execute(_profile(me.arch), ["no-such-flag"]) == "this host's CPU lacks no-such-flag"
    monkeypatch.setattr(host, "gpu_present", lambda: False)
    assert host.cannot_execute(_profile(me.arch, cuda=True)) == "no NVIDIA GPU is attached to this host"


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEKILN_CACHE", str(tmp_path))
    assert host.cache_root() == tmp_path


def test_machine_description_is_for_reports():
    info = host.machine_description()
    assert set(info) == {"cpu", "cores", "arch", "python", "system"} and info["arch"] == host.host_info().arch


def test_console_progress_prints_steps_and_throttles_advances():
    stream = io.StringIO()
    progress = ConsoleProgress(stream, interval_s=3600)
    with progress.step("load it"):
        pass
    for done in range(1, 6):
        progress.advance(done, 5, "busy", unit="pair")
    progress.advance(7, None, "open-ended")
    lines = stream.getvalue().splitlines()
    assert lines[0] == "  …     load it" and lines[1].startswith("  done  load it (")
    assert lines[2:] == ["        pair 1/5  busy", "        pair 5/5  busy"]
    assert "load it" in progress.timings
    with NullProgress().step("quiet"):
        NullProgress().advance(1, 2, "nothing")

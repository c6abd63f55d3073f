"""Host facts and the progress reporter."""

from __future__ import annotations

import io
import re
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


def test_loop_lines_start_where_step_text_starts_on_a_terminal_and_off_it():
    """Compile, tune and bench share one reporter: a loop's line (pairs, trials) starts in the
    column where a step's description does, in plain logs and on a terminal."""
    from rich.console import Console

    plain = io.StringIO()
    progress = ConsoleProgress(plain)
    with progress.step("time candidate tvm"):
        progress.advance(1, 3, "m: tvm 12.0 ms ['x']", unit="pair")
    lines = plain.getvalue().splitlines()
    assert lines[1] == "        pair 1/3  m: tvm 12.0 ms ['x']"
    assert lines[1].index("pair") == lines[2].index("time candidate") == ConsoleProgress.PLAIN_INDENT

    tty = io.StringIO()
    progress = ConsoleProgress(tty)
    progress._rich = Console(file=tty, force_terminal=True, no_color=True, width=200, highlight=False)
    with progress.step("time candidate tvm"):
        pass
    progress.advance(1, 3, "m: tvm 12.0 ms ['x']", unit="pair")
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", tty.getvalue()).replace("\r", "\n")
    text = [line for line in shown.splitlines() if "time candidate" in line or "pair" in line]
    done, pair = text[-2], text[-1]
    assert done.endswith(")") and done.index("time candidate") == ConsoleProgress.TERMINAL_INDENT
    assert pair.rstrip().endswith("pair 1/3  m: tvm 12.0 ms ['x']")
    assert pair.index("pair") == ConsoleProgress.TERMINAL_INDENT

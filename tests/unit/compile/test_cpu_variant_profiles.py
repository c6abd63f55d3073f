"""A profile's CPU variants are checked before anything is built: each must be a CPU profile
of the same arch whose CPU executes everything the profile's does."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from edgekiln.compile.backends.tvm.backend import required_cpu_features
from edgekiln.compile.backends.tvm.variants import variant_profiles
from edgekiln.device_profiles import get_profile
from edgekiln.errors import UserError


def _with_variants(alias: str, *variants: str):
    profile = get_profile(alias)
    return dataclasses.replace(profile, cpu=dataclasses.replace(profile.cpu, variants=variants))


def test_x86_64_lists_c5_and_its_variant_needs_only_the_avx512_flags() -> None:
    ((variant, extra),) = variant_profiles(get_profile("x86_64"), required_cpu_features)
    assert variant.id == "aws/c5"
    assert extra == ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl")
    assert variant_profiles(get_profile("ml_c5"), required_cpu_features) == []


@pytest.mark.parametrize(
    ("base", "variant", "expected"),
    [
        ("x86_64", "rasp5", r"lists raspberry-pi/5-aarch64 as a CPU variant, but it is for aarch64"),
        ("x86_64", "h200", r"lists nvidia/h200-sxm as a CPU variant, but it is a CUDA profile"),
        # The portable profile is no variant of the AVX-512 one: its CPU lacks AVX-512.
        ("ml_c5", "x86_64", r"lists generic/x86-64-avx2 as a CPU variant, but its CPU lacks avx512f"),
        ("x86_64", "no-such-board", r"no-such-board"),
    ],
)
def test_a_variant_that_cannot_stand_in_is_a_mistake_in_the_profile(base: str, variant: str, expected: str) -> None:
    with pytest.raises(UserError, match=expected):
        variant_profiles(_with_variants(base, variant), required_cpu_features)


def test_no_variant_is_built_where_the_hosts_cpu_flags_are_unknown(monkeypatch, tmp_path) -> None:
    """Without /proc/cpuinfo the host may run the portable build but not the AVX-512 one:
    nothing is built that validation could not run, and the manifest says why."""
    from edgekiln.compile.backends.tvm import variants
    from edgekiln.execute import host
    from edgekiln.execute.progress import NullProgress
    from edgekiln.runtime.compat import HostInfo

    blind = HostInfo(arch="x86_64", os="linux", glibc="2.36", cpu_features=frozenset())
    monkeypatch.setattr(host, "host_info", lambda: blind)
    monkeypatch.setattr(variants, "host_info", lambda: blind)
    built = variants.build_variants(
        None, None, get_profile("x86_64"), required_cpu_features, None, None, tmp_path, NullProgress()
    )
    assert built.files == {} and not any(tmp_path.iterdir())
    (entry,) = built.entries
    assert entry["built"] is False and "CPU flags are unknown" in entry["reason"]


def test_a_variant_whose_records_fall_under_the_rule_when_built_is_left_out(monkeypatch, tmp_path) -> None:
    """Shipped records that this TVM cannot build are left out while the variant builds;
    if what is left covers under 90% of the FLOPs, the variant is not shipped."""
    pytest.importorskip("tvm")
    from edgekiln.compile.backends.tvm import shipped_check, tuning, variants
    from edgekiln.execute.progress import NullProgress

    def applied(share: float) -> tuning.AppliedRecords:
        return tuning.AppliedRecords(object(), tuning.Coverage(share, (), 2, {}), ())

    exported = []
    monkeypatch.setattr(variants, "cannot_execute", lambda profile, features: None)
    monkeypatch.setattr(variants, "_features_unknown", lambda extra: None)
    monkeypatch.setattr(tuning, "records_for_build", lambda *a: applied(1.0))
    monkeypatch.setattr(shipped_check, "build_with_records", lambda *a: ("executable", applied(0.5)))
    built = variants.build_variants(
        SimpleNamespace(target=SimpleNamespace(Target=lambda target: target)),  # only targets are made
        None,
        get_profile("x86_64"),
        required_cpu_features,
        None,
        lambda executable, path: exported.append(path),
        tmp_path,
        NullProgress(),
    )
    (entry,) = built.entries
    assert entry["built"] is False and "cover 50% of the model's FLOPs, under the 90% rule" in entry["reason"]
    assert built.files == {} and exported == []


class _Steps:
    def __init__(self) -> None:
        self.done_steps: list[tuple[str, float]] = []
        self.started: list[str] = []

    def step(self, description: str):
        import contextlib

        self.started.append(description)
        return contextlib.nullcontext()

    def advance(self, *args, **kwargs) -> None:
        pass

    def done(self, description: str, elapsed: float) -> None:
        self.done_steps.append((description, elapsed))


def _background_with(monkeypatch, fake, *, threads: int = 1):
    from edgekiln.compile.backends.tvm import variants

    monkeypatch.setattr(variants, "build_variants", fake)
    # Earlier tests may leave idle pool threads in this process (MetaSchedule's); the guard
    # against forking a threaded process is tested on its own below.
    monkeypatch.setattr(variants.threading, "active_count", lambda: threads)
    return variants.InBackground("tvm", "mod", "profile", None, None, None, "root")


def test_variants_built_in_a_child_process_come_back_with_their_steps(monkeypatch) -> None:
    import os
    import time

    from edgekiln.compile.backends.tvm.variants import Variants

    parent = os.getpid()

    def fake(*args):
        progress = args[-1]
        with progress.step("build the fake variant"):
            time.sleep(0.05)
        return Variants(files={"lib/v.so": "x"}, entries=[{"pid": os.getpid(), "args": list(args[:-1])}])

    steps = _Steps()
    built = _background_with(monkeypatch, fake).result(steps)
    (entry,) = built.entries
    assert entry["pid"] != parent and entry["args"] == ["tvm", "mod", "profile", None, None, None, "root"]
    assert built.files == {"lib/v.so": "x"}
    ((description, elapsed),) = steps.done_steps
    assert description == "build the fake variant, in parallel" and elapsed >= 0.05


def test_a_child_that_fails_raises_the_same_error_in_the_caller(monkeypatch) -> None:
    from edgekiln.errors import BackendError

    def edgekiln_error(*args):
        raise UserError("bad variant", hint="fix the profile")

    with pytest.raises(UserError, match="bad variant") as caught:
        _background_with(monkeypatch, edgekiln_error).result(_Steps())
    assert caught.value.hint == "fix the profile"

    def foreign_error(*args):
        raise RuntimeError("C++ backtrace\nTVMError: nested op_tag")

    with pytest.raises(BackendError, match="building the CPU variants failed: TVMError: nested op_tag"):
        _background_with(monkeypatch, foreign_error).result(_Steps())


def test_a_child_that_dies_is_a_one_line_error_that_says_what_to_do(monkeypatch) -> None:
    import os

    from edgekiln.errors import BackendError

    def dies(*args):
        os._exit(7)

    with pytest.raises(BackendError, match=r"ended without a result \(exit code 7\)") as caught:
        _background_with(monkeypatch, dies).result(_Steps())
    assert "cpu_variants=false" in caught.value.hint


def test_a_process_with_other_threads_builds_the_variants_itself(monkeypatch) -> None:
    import os

    from edgekiln.compile.backends.tvm.variants import Variants

    background = _background_with(monkeypatch, lambda *args: Variants(entries=[{"pid": os.getpid()}]), threads=2)
    assert background._child is None
    assert background.result(_Steps()).entries == [{"pid": os.getpid()}]


def test_ctrl_c_leaves_the_child_to_the_parent_which_stops_it(monkeypatch, tmp_path) -> None:
    """Ctrl-C reaches the whole process group: the child ignores it (no second traceback),
    and the parent's cancel, which the TVM backend runs on any way out, stops it."""
    import os
    import signal
    import time

    started = tmp_path / "started"

    def slow(*args):
        started.touch()  # after the child's handler is in place
        time.sleep(60)

    background = _background_with(monkeypatch, slow)
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(background._child.pid, signal.SIGINT)
    time.sleep(0.3)
    assert background._child.is_alive()
    start = time.monotonic()
    background.cancel()
    assert time.monotonic() - start < 10
    assert background._child.exitcode == -signal.SIGTERM
    background.cancel()  # a second cancel, as after a finished build, does nothing

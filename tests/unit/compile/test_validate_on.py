"""--validate-on: where compile validates, chosen explicitly or by auto, and said out loud
(onnxruntime backend on a tiny model; the emulated board is stood in for where it matters)."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from edgekiln.artifact.package import read_manifest
from edgekiln.compile import validate_on
from edgekiln.compile.api import CompileOptions, compile_model
from edgekiln.device_profiles import get_profile
from edgekiln.errors import DependencyError, UserError

RASP4B = get_profile("rasp4b")
X86 = get_profile("x86_64")
FOREIGN = "this host is x86_64; the profile's CPU is aarch64"


def _board(monkeypatch, problem):
    monkeypatch.setattr(validate_on, "emulated_board_problem", lambda profile, **_: problem)


def test_auto_validates_on_the_host_when_it_can_execute_the_target():
    site = validate_on.choose(X86, "auto", host_problem=None, native=False)
    assert (site.where, site.requested) == ("host", "auto")
    line = site.describe(X86)
    assert line.startswith("validate on: this host -- chosen by --validate-on auto: this host can execute")
    assert line.endswith("change with --validate-on emulator|none")


def test_auto_takes_a_built_emulated_board_and_says_it_costs_minutes(monkeypatch):
    _board(monkeypatch, None)
    site = validate_on.choose(RASP4B, "auto", host_problem=FOREIGN, native=False)
    assert site.where == "emulator"
    line = site.describe(RASP4B)
    assert "the emulated rasp4b board (qemu-user; minutes, not seconds)" in line
    assert f"cannot execute the target ({FOREIGN}) and its board is built" in line
    assert line.endswith("change with --validate-on host|none")


def test_auto_without_a_built_board_validates_nowhere_and_says_why(monkeypatch):
    not_built = "its emulated board is not built (run `edgekiln emulate rasp4b --info` or `make emulators` once)"
    _board(monkeypatch, not_built)
    site = validate_on.choose(RASP4B, "auto", host_problem=FOREIGN, native=False)
    assert site.where == "none"
    assert site.why == f"this machine cannot execute the target ({FOREIGN}) and {not_built}"
    assert site.describe(RASP4B).startswith("validate on: nowhere (the artifact is not validated)")


def test_named_sites_that_cannot_be_used_fail_with_the_alternative():
    with pytest.raises(UserError, match=r"--validate-on host: this machine cannot execute raspberry-pi/4b-") as e:
        validate_on.choose(RASP4B, "host", host_problem=FOREIGN, native=False)
    assert e.value.hint == "use --validate-on emulator"
    with pytest.raises(UserError, match=f"--validate-on emulator: profile {X86.id} has no emulated board") as e:
        validate_on.choose(X86, "emulator", host_problem=None, native=False)
    assert e.value.hint == "use --validate-on host"
    with pytest.raises(UserError, match="--validate-on takes auto, host, emulator, none, not 'board'"):
        validate_on.choose(X86, "board", host_problem=None, native=False)


def test_named_emulator_builds_the_board_and_refuses_one_without_the_runtime(monkeypatch):
    from edgekiln import emulation

    built = []
    board = SimpleNamespace(missing=(), python_packages=lambda: {"numpy": "2.4.6", "onnxruntime": "1.20.0"})
    monkeypatch.setattr(emulation, "ensure_sysroot", lambda profile, progress=None: built.append(profile.id) or board)
    site = validate_on.choose(RASP4B, "emulator", host_problem=FOREIGN, native=False)
    assert site.board_problem(RASP4B, ("onnxruntime>=1.20.0", "numpy"), native=False) is None
    assert built == ["raspberry-pi/4b-aarch64"]
    with pytest.raises(DependencyError, match=r"lacks onnxruntime>=1\.32\.0 \(it has 1\.20\.0\)"):
        site.board_problem(RASP4B, ("onnxruntime>=1.32.0", "numpy"), native=False)
    with pytest.raises(DependencyError, match=r"lacks ai-edge-litert==2\.3\.0 \(not installed there\)"):
        site.board_problem(RASP4B, ("ai-edge-litert==2.3.0",), native=False)
    # A native-runtime artifact needs the board's C library, not its Python packages.
    assert site.board_problem(RASP4B, ("apache-tvm-ffi==0.1.15.post2",), native=True) is None


def test_options_refuse_contradictions_and_unknown_sites():
    with pytest.raises(UserError, match="--no-validate contradicts --validate-on emulator"):
        CompileOptions(validate=False, validate_on="emulator")
    with pytest.raises(UserError, match="validate_on takes auto, host, emulator, none, not 'qemu'"):
        CompileOptions(validate_on="qemu")
    assert CompileOptions(validate=False).validation_site(X86).where == "none"


def test_none_records_not_validated_in_the_manifest(tiny_model, tmp_path):
    out = tmp_path / "t.tar.gz"
    compile_model(tiny_model, "x86_64", out, options=CompileOptions(backend="onnxruntime", validate_on="none"))
    validation = read_manifest(out).validation
    assert (validation.status, validation.reason, validation.samples) == (
        "skipped",
        "not validated (--validate-on none)",
        0,
    )
    assert validation.max_abs_diff is None and validation.executed_on is None


def test_an_impossible_site_fails_before_any_work(tiny_model, tmp_path, monkeypatch):
    from edgekiln.compile import api

    monkeypatch.setattr(api, "import_source", lambda *a, **k: pytest.fail("imported before the check"))
    with pytest.raises(UserError, match="--validate-on host: this machine cannot execute"):
        compile_model(tiny_model, "rasp4b", tmp_path / "t.tar.gz", options=CompileOptions(validate_on="host"))
    assert not (tmp_path / "t.tar.gz").exists()


def test_auto_on_a_foreign_target_without_a_board_skips_with_the_reason(tiny_model, tmp_path, monkeypatch):
    _board(monkeypatch, "its emulated board is not built")
    out = tmp_path / "t.tar.gz"
    compile_model(tiny_model, "rasp4b", out, options=CompileOptions(backend="onnxruntime"))
    validation = read_manifest(out).validation
    assert validation.status == "skipped"
    assert validation.reason == (
        f"this machine cannot execute the target ({FOREIGN}) and its emulated board is not built"
    )


def test_cli_prints_the_choice_and_where_it_validated(tiny_model, tmp_path):
    out = tmp_path / "t.tar.gz"
    proc = subprocess.run(
        [sys.executable, "-m", "edgekiln.cli.main", "compile", str(tiny_model), "-t", "x86_64"]
        + ["--backend", "onnxruntime", "--validate-on", "host", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[0] == (
        "validate on: this host -- --validate-on host: asked for; change with --validate-on emulator|none"
    )
    assert "over 3 samples on host x86_64 (cpu)" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "edgekiln.cli.main", "compile", str(tiny_model), "-t", "rasp4b"]
        + ["--backend", "onnxruntime", "--validate-on", "host", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "--validate-on host: this machine cannot execute raspberry-pi/4b-aarch64" in proc.stderr

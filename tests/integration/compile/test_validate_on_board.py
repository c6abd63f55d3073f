"""onnxruntime and litert artifacts for rasp4b validated on the emulated board, which
carries both runtimes, and --validate-on as the CLI says it.

The rasp4b board is built on first use (about half a minute; downloads its Debian packages
and its hash-locked wheels) and cached like any other run.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgekiln.artifact.package import read_manifest
from edgekiln.compile.api import CompileOptions, compile_model
from edgekiln.emulation import ensure_sysroot
from tests.data import native as helpers

TIMEOUT = 900
ON_BOARD = "emulated raspberry-pi/4b-aarch64 (qemu cortex-a72) (cpu)"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    ensure_sysroot("rasp4b")
    return helpers.small_classifier(tmp_path_factory.mktemp("small") / "small.onnx")


@pytest.mark.parametrize("backend", ["onnxruntime", "litert"])
def test_rasp4b_artifact_validates_on_the_emulated_board(backend, small, tmp_path):
    out = tmp_path / f"small-{backend}.tar.gz"
    artifact = compile_model(small, "rasp4b", out, options=CompileOptions(backend=backend, validate_on="emulator"))
    validation = read_manifest(out).validation
    assert validation.status == "passed", validation.reason
    assert validation.executed_on == ON_BOARD
    assert validation.samples == 3 and validation.top1_agreement == 1.0
    assert validation.max_abs_diff is not None and validation.max_abs_diff <= 1e-4
    assert artifact.manifest.backend == backend and artifact.manifest.runtime.arch == "aarch64"


def test_cli_auto_picks_the_built_board_says_so_and_reports_in_json(small, tmp_path):
    out = tmp_path / "small.tar.gz"
    proc = subprocess.run(
        [sys.executable, "-m", "edgekiln.cli.main", "compile", str(small), "-t", "rasp4b"]
        + ["--backend", "litert", "--json", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    first = proc.stderr.splitlines()[0]
    assert first.startswith("validate on: the emulated rasp4b board (qemu-user; minutes, not seconds) -- chosen by")
    assert first.endswith("and its board is built; change with --validate-on host|none")
    validation = json.loads(proc.stdout)["validation"]
    assert (validation["status"], validation["executed_on"]) == ("passed", ON_BOARD)


def test_cli_none_leaves_the_board_alone_and_records_not_validated(small, tmp_path):
    out = tmp_path / "small.tar.gz"
    proc = subprocess.run(
        [sys.executable, "-m", "edgekiln.cli.main", "compile", str(small), "-t", "rasp4b"]
        + ["--backend", "onnxruntime", "--validate-on", "none", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "validate on: nowhere (the artifact is not validated) -- --validate-on none" in proc.stderr
    assert "validate against" not in proc.stderr
    assert proc.stdout.splitlines()[1] == "  not validated (--validate-on none)"
    assert read_manifest(out).validation.reason == "not validated (--validate-on none)"

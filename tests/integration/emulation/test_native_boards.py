"""The native runtime on the emulated boards: rasp3b (32-bit ARM, where nothing else runs)
and rasp4b. Compile validates through it there; a C program written against DLR's API
builds with the cross toolchain and classifies on the board; the C API tests pass there."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgekiln.artifact import unpack
from edgekiln.compile.toolchain import find_tools
from tests.data import native as helpers

BOARDS = {"rasp3b": "armv7l", "rasp4b": "aarch64"}


@pytest.fixture(scope="module", params=sorted(BOARDS))
def board(request, tmp_path_factory):
    """(profile, its native runtime, the small classifier compiled for it with the native
    runtime and validated on the emulated board, the extracted artifact)."""
    from edgekiln.compile.api import CompileOptions, compile_model
    from edgekiln.compile.native import ensure_native_runtime
    from edgekiln.device_profiles import get_profile
    from edgekiln.emulation import ensure_sysroot

    profile = get_profile(request.param)
    ensure_sysroot(profile)
    runtime = ensure_native_runtime(profile)
    tmp = tmp_path_factory.mktemp(request.param)
    model = helpers.small_classifier(tmp / "small.onnx")
    options = CompileOptions(backend="tvm", native_runtime=True)
    artifact = compile_model(model, request.param, tmp / "small.tar.gz", options=options)
    unpack(artifact.path, tmp / "x")
    return profile, runtime, artifact, tmp / "x"


def _on_board(profile, argv):
    from edgekiln import emulation

    return emulation.run(profile, [str(a) for a in argv], capture_output=True, timeout=600)


def test_compile_validates_on_the_emulated_board_without_python(board):
    profile, runtime, artifact, _root = board
    validation = artifact.manifest.validation
    assert validation.status == "passed", validation.reason
    assert validation.executed_on.startswith(f"emulated {profile.id}")
    assert "native runtime" in validation.executed_on
    assert validation.max_abs_diff <= 1e-4 and validation.top1_agreement == 1.0
    assert artifact.manifest.extra["native_runtime"]["arch"] == BOARDS[profile.aliases[0]]


def test_c_api_tests_pass_on_the_board(board, tmp_path):
    profile, runtime, artifact, root = board
    program = helpers.build_c(runtime, helpers.C_TEST, tmp_path / "t", find_tools(profile, "gcc")[1])
    x = np.random.default_rng(3).standard_normal((1, 3, 16, 16)).astype(np.float32)
    x.tofile(tmp_path / "x.raw")
    ran = _on_board(profile, [program, "run", artifact.path, tmp_path / "x.raw", tmp_path / "y.raw"])
    assert ran.returncode == 0, ran.stderr
    errors = _on_board(profile, [program, "errors", root])
    assert errors.returncode == 0 and "unknown input name" in errors.stdout, errors.stderr
    output = np.fromfile(tmp_path / "y.raw", dtype=np.float32)
    import onnxruntime as ort

    session = ort.InferenceSession(str(helpers.small_classifier(tmp_path / "s.onnx")))
    assert np.abs(output - session.run(None, {"input": x})[0][0]).max() <= 1e-4


def test_a_dlr_program_classifies_on_the_board_as_on_the_host(board, tmp_path):
    profile, runtime, artifact, root = board
    # The check: a C file against DLR's API, built with the C++ cross compiler.
    program = helpers.build_c(runtime, helpers.EXAMPLE, tmp_path / "classify", profile.toolchain.cc)
    x = np.random.default_rng(4).standard_normal((1, 3, 16, 16)).astype(np.float32)
    x.tofile(tmp_path / "x.raw")
    ran = _on_board(profile, [program, artifact.path, tmp_path / "x.raw"])
    assert ran.returncode == 0, ran.stderr
    import onnxruntime as ort

    session = ort.InferenceSession(str(helpers.small_classifier(tmp_path / "s.onnx")))
    reference = session.run(None, {"input": x})[0][0]
    top1 = int(ran.stdout.split()[1])
    logit = float(ran.stdout.split("logit ")[1].rstrip(")\n"))
    assert top1 == int(np.argmax(reference)) and abs(logit - reference[top1]) <= 1e-4


def test_edgekiln_run_under_emulate_prints_the_hosts_top1(board, tmp_path):
    profile, runtime, artifact, root = board
    np.save(tmp_path / "x.npy", np.random.default_rng(5).standard_normal((1, 3, 16, 16)).astype(np.float32))
    cmd = [sys.executable, "-m", "edgekiln.cli.main", "emulate", profile.aliases[0], "--"]
    board_run = subprocess.run(
        [*cmd, "edgekiln-run", str(artifact.path), str(tmp_path / "x.npy"), "--json"], capture_output=True, text=True
    )
    assert board_run.returncode == 0, board_run.stderr
    import onnxruntime as ort

    session = ort.InferenceSession(str(helpers.small_classifier(tmp_path / "s.onnx")))
    reference = session.run(None, {"input": np.load(tmp_path / "x.npy")})[0][0]
    top = json.loads(board_run.stdout)["results"][0]["top"]
    assert top[0]["index"] == int(np.argmax(reference))


def test_a_host_artifact_is_refused_on_the_board(board, tmp_path):
    from edgekiln.compile.api import CompileOptions, compile_model

    profile, runtime, _artifact, _root = board
    program = helpers.build_c(runtime, helpers.C_TEST, tmp_path / "t", find_tools(profile, "gcc")[1])
    model = helpers.small_classifier(tmp_path / "s.onnx")
    host = compile_model(model, "x86_64", tmp_path / "h.tar.gz", options=CompileOptions(backend="tvm", validate=False))
    refused = _on_board(profile, [program, "refuse", host.path, "needs a x86_64 CPU"])
    assert refused.returncode == 0, refused.stdout + refused.stderr
    assert f"this device is {BOARDS[profile.aliases[0]]}" in refused.stdout

"""`edgekiln compile` on hostile model files: whatever a file asks the framework loader to
unpickle or execute is refused before it runs, with one line and exit 2."""

from __future__ import annotations

import pytest

from tests.data.hostile import pt2
from tests.e2e.cli.test_cli_compile import assert_clean_failure, edgekiln


@pytest.mark.parametrize("attack", sorted(pt2.ATTACKS))
def test_a_pt2_that_would_run_code_is_refused_and_the_code_never_runs(tmp_path, attack):
    canary = tmp_path / "canary"
    model = pt2.ATTACKS[attack](tmp_path / "evil.pt2", canary)
    out = tmp_path / "out.tar.gz"
    proc = edgekiln("compile", str(model), "--target", "x86_64", "--backend", "onnxruntime", "-o", str(out))
    assert_clean_failure(proc, 2, "evil.pt2")
    assert not canary.exists(), f"the {attack} payload ran"
    assert not out.exists()


def test_a_plain_pt2_still_compiles(tmp_path):
    model = pt2.saved_program(tmp_path / "net.pt2")
    out = tmp_path / "out.tar.gz"
    proc = edgekiln("compile", str(model), "--target", "x86_64", "--backend", "onnxruntime", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_keras_lambda_layer_is_refused_and_never_runs(tmp_path, suffix):
    from tests.data.hostile.keras import lambda_model

    canary = tmp_path / "canary"
    model = lambda_model(tmp_path / f"evil{suffix}", canary)
    proc = edgekiln(
        "compile", str(model), "--target", "x86_64", "--backend", "onnxruntime", "-o", str(tmp_path / "out.tar.gz")
    )
    assert_clean_failure(proc, 2, f"evil{suffix}", "Lambda")
    assert not canary.exists()


def test_a_saved_model_that_writes_files_when_loaded_is_refused_first(tmp_path):
    from tests.data.hostile.saved_model import writes_on_load

    canary = tmp_path / "canary"
    model = writes_on_load(tmp_path / "evil", canary)
    proc = edgekiln(
        "compile", str(model), "--target", "x86_64", "--backend", "onnxruntime", "-o", str(tmp_path / "out.tar.gz")
    )
    assert_clean_failure(proc, 2, "operator WriteFile")
    assert not canary.exists()


def test_a_torchscript_archive_with_a_python_pickle_never_runs_it(tmp_path):
    canary = tmp_path / "canary"
    model = pt2.torchscript_pickle(tmp_path / "evil.pt", canary)
    proc = edgekiln(
        "compile",
        str(model),
        "--target",
        "x86_64",
        "--backend",
        "onnxruntime",
        "--input-config",
        "[[1, 3, 8, 8]]",
        "-o",
        str(tmp_path / "out.tar.gz"),
    )
    assert_clean_failure(proc, 2, "cannot be loaded as TorchScript")
    assert not canary.exists()

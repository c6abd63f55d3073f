"""``edgekiln compile`` option handling through the real entry point (no compile runs: each
case fails or is caught before the model is imported)."""

from __future__ import annotations

import pytest

from edgekiln.cli import main as cli_main
from edgekiln.compile import api
from edgekiln.errors import UserError


@pytest.fixture
def captured(monkeypatch):
    """The CompileOptions the command would compile with."""
    seen = {}

    def fake_compile(model, target, output, **kwargs):
        seen.update(kwargs, model=model, output=output)
        raise UserError("stopped before compiling")

    monkeypatch.setattr(api, "compile_model", fake_compile)
    return seen


def run(capsys, *argv):
    code = cli_main.main(["compile", "zoo:resnet18", "-t", "x86_64", *argv])
    return code, capsys.readouterr().err


def test_backend_options_go_through_the_backend_type(capsys, captured):
    from edgekiln.compile.backends.onnxruntime.backend import ONNXRuntimeOptions

    code, err = run(
        capsys,
        "--backend",
        "onnxruntime",
        "--backend-option",
        "intra_op_threads=2",
        "--backend-option",
        "optimization=basic",
        "--input-shape",
        "1,3,224,224",
    )
    assert code != 0 and "stopped before compiling" in err
    assert captured["options"].backend_options == (ONNXRuntimeOptions(optimization="basic", intra_op_threads=2),)
    assert captured["input_shape"] == [1, 3, 224, 224]


def test_no_ptx_is_the_tvm_option_also_under_auto(capsys, captured):
    from edgekiln.compile.backends.tvm.backend import TVMOptions

    run(capsys, "--no-ptx")
    assert captured["options"].backend_options == (TVMOptions(embed_ptx=False),)
    run(capsys, "--backend", "tvm", "--no-ptx", "--backend-option", "strip=false")
    assert captured["options"].backend_options == (TVMOptions(embed_ptx=False, strip=False),)


def test_tuning_db_is_the_tvm_option_also_under_auto(capsys, captured):
    from edgekiln.compile.backends.tvm.backend import TVMOptions

    run(capsys, "--tuning-db", "db=1/x")
    assert captured["options"].backend_options == (TVMOptions(tuning_db="db=1/x"),)
    run(capsys, "--backend", "tvm", "--no-ptx", "--tuning-db", "tuned")
    assert captured["options"].backend_options == (TVMOptions(embed_ptx=False, tuning_db="tuned"),)


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ("--backend", "litert", "--backend-option", "threads=2"),
            "unknown litert backend option(s) threads; valid options: quantize, calibration",
        ),
        (("--backend", "tvm", "--backend-option", "strip=maybe"), "tvm backend option strip must be true or false"),
        (("--backend-option", "strip=false"), "--backend-option needs the backend it is for"),
        (("--backend", "onnxruntime", "--no-ptx"), "--no-ptx applies to the tvm backend, not onnxruntime"),
        (("--backend", "litert", "--tuning-db", "db"), "--tuning-db applies to the tvm backend, not litert"),
        (("--input-config", '{"x": [1]}', "--input-shape", "1"), "either with --input-config or with --input-shape"),
    ],
)
def test_option_mistakes_are_one_line_errors(capsys, captured, argv, message):
    code, err = run(capsys, *argv)
    assert code != 0 and message in err and "Traceback" not in err
    assert not captured  # nothing reached compile


def test_json_compile_seconds_is_the_whole_command(capsys, monkeypatch, tmp_path):
    """--json reports the command's wall time from the process's start, not the manifest's
    figure (which ends before packing and leaves out start-up and imports)."""
    import json
    from types import SimpleNamespace

    from edgekiln.cli import compile as compile_cli

    artifact = SimpleNamespace(summary=lambda: {"compile_seconds": 0.64})
    monkeypatch.setattr(api, "compile_model", lambda *a, **k: artifact)
    monkeypatch.setattr(compile_cli, "_seconds_since_start", lambda: 35.123)
    code = cli_main.main(["compile", "zoo:resnet18", "-t", "x86_64", "-o", str(tmp_path / "a.tar.gz"), "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["compile_seconds"] == 35.12
    # The real clock: this test process started before this line ran.
    assert compile_cli._seconds_since_start() > 0

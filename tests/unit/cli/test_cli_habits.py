"""Command-line habits: mistyped flags and commands get a suggestion, --framework takes Neo's
spelling, --json failures are JSON on stdout, plain compile output names auto's choice, and
fleet commands say what to do when no service listens or which admin token they use."""

from __future__ import annotations

import json
import socket
import types

import pytest

from edgekiln.artifact.manifest import BackendSelection
from edgekiln.cli.main import build_parser, main


def parse_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_a_mistyped_flag_suggests_the_right_one_for_its_subcommand(capsys):
    line = parse_error(["compile", "zoo:resnet18", "-t", "x86_64", "--bakend", "tvm"], capsys)
    assert line == "edgekiln compile: error: unrecognized arguments: --bakend tvm (did you mean --backend?)"
    line = parse_error(["zoo", "list", "--jsn"], capsys)
    assert line == "edgekiln zoo list: error: unrecognized arguments: --jsn (did you mean --json?)"
    line = parse_error(["gate", "a.json", "b.json", "--ratoi=0.3"], capsys)
    assert line.endswith("unrecognized arguments: --ratoi=0.3 (did you mean --ratio?)")
    # Nothing close: no guess.
    line = parse_error(["compile", "zoo:resnet18", "-t", "x86_64", "--zzzz"], capsys)
    assert line == "edgekiln compile: error: unrecognized arguments: --zzzz"


def test_a_mistyped_command_suggests_the_right_one(capsys):
    assert parse_error(["compil", "zoo:resnet18"], capsys).endswith("did you mean 'compile'?")
    assert parse_error(["fleet", "regster", "f", "d"], capsys).endswith("did you mean 'register'?")


def test_framework_is_case_insensitive_as_neo_wrote_it():
    for spelling in ("PYTORCH", "PyTorch", "pytorch"):
        args = build_parser().parse_args(["compile", "m.pt", "-t", "x86_64", "--framework", spelling])
        assert args.framework == "pytorch"


def test_compile_json_failure_is_a_json_object_on_stdout(tmp_path, capsys):
    missing = tmp_path / "missing.onnx"
    assert main(["compile", str(missing), "-t", "x86_64", "--json"]) == 2
    captured = capsys.readouterr()
    answer = json.loads(captured.out)
    assert answer["status"] == "error" and answer["command"] == "compile"
    assert answer["error"]["type"] == "UserError" and answer["error"]["exit_code"] == 2
    assert answer["error"]["message"] == f"model file {missing} does not exist"
    assert "edgekiln compile: error: model file" in captured.err
    # Without --json, stdout stays empty.
    assert main(["compile", str(missing), "-t", "x86_64"]) == 2
    assert capsys.readouterr().out == ""


def fake_artifact(selection):
    validation = types.SimpleNamespace(
        status="passed",
        max_abs_diff=1e-6,
        max_rel_diff=1e-6,
        tolerance_abs=1e-4,
        tolerance_rel=1e-5,
        top1_agreement=1.0,
        samples=3,
        reason=None,
        reference="onnxruntime",
        second_reference=None,
        second_max_abs_diff=None,
        warnings=(),
    )
    manifest = types.SimpleNamespace(validation=validation, backend_selection=selection, quantization=None)
    summary = {
        "artifact": "m.tar.gz",
        "model": "m",
        "profile": "generic/x86-64-avx2",
        "backend": "onnxruntime",
        "target_triple": "x86_64-linux-gnu",
        "size_bytes": 1_000_000,
    }
    return types.SimpleNamespace(manifest=manifest, summary=lambda: summary)


@pytest.mark.parametrize("auto", [True, False])
def test_plain_compile_output_says_what_auto_chose_and_why(monkeypatch, capsys, auto):
    reason = "fastest of 3 timed candidates: median time 0.8 x ONNX Runtime's"
    selection = BackendSelection(mode="auto", chosen="onnxruntime", reason=reason) if auto else None
    monkeypatch.setattr("edgekiln.compile.api.compile_model", lambda *a, **k: fake_artifact(selection))
    assert main(["compile", "zoo:resnet18", "-t", "x86_64", "-o", "m.tar.gz"]) == 0
    out = capsys.readouterr().out.splitlines()
    chosen = [line for line in out if "chosen by --backend auto" in line]
    assert chosen == ([f"  backend onnxruntime chosen by --backend auto: {reason}"] if auto else [])


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fleet_register_names_endpoint_when_nothing_listens(monkeypatch, capsys):
    monkeypatch.setenv("EDGEKILN_FLEET_ADMIN_TOKEN", "t" * 24)
    url = f"http://127.0.0.1:{closed_port()}"
    assert main(["fleet", "register", "fleet-a", "device-1", "--endpoint", url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"edgekiln fleet: error: no fleet service at {url}; pass --endpoint URL of the running service "
        "(or set EDGEKILN_FLEET_ENDPOINT)"
    ]


def test_fleet_serve_admin_token_file_is_a_file_and_wins(monkeypatch, tmp_path, capsys):
    pytest.importorskip("fastapi", reason="the fleet extra")
    seen = []
    monkeypatch.setattr("edgekiln.fleet.serving.serve", lambda options, **kw: seen.append(options.admin_token))
    monkeypatch.setenv("EDGEKILN_FLEET_ADMIN_TOKEN", "from-the-variable-0123456789")
    token_file = tmp_path / "token"
    token_file.write_text("from-the-file-0123456789\n")
    data = ["--data-dir", str(tmp_path / "data")]
    assert main(["fleet", "serve", *data, "--admin-token-file", str(token_file)]) == 0
    assert main(["fleet", "serve", *data]) == 0
    assert seen == ["from-the-file-0123456789", "from-the-variable-0123456789"]
    err = capsys.readouterr().err
    assert f"admin token in {token_file}" in err and "admin token in $EDGEKILN_FLEET_ADMIN_TOKEN" in err

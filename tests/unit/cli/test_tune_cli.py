"""``edgekiln tune`` and ``tune-merge`` through the real entry point: options reach the tuner,
mistakes are one-line errors, and merge writes one database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekiln.cli import main as cli_main
from edgekiln.compile.backends.tvm import tuner
from edgekiln.errors import UserError


@pytest.fixture
def captured(monkeypatch):
    seen = {}

    def fake_tune(model, target, options, **kwargs):
        seen.update(kwargs, model=model, target=target, options=options)
        raise UserError("stopped before tuning")

    monkeypatch.setattr(tuner, "tune_model", fake_tune)
    return seen


def test_options_reach_the_tuner_with_the_local_runner(capsys, captured):
    code = cli_main.main(
        ["tune", "zoo:resnet18", "-t", "x86_64", "--trials", "100", "--trials-per-task", "8", "--tuning-db", "db"]
    )
    assert code != 0 and "stopped before tuning" in capsys.readouterr().err
    options = captured["options"]
    assert (options.trials, options.trials_per_task, options.tuning_db) == (100, 8, Path("db"))
    assert options.order == "flops"
    assert captured["model"] == "zoo:resnet18" and captured["target"] == "x86_64"
    assert captured["runner"] is None and captured["builder"] is None  # MetaSchedule's local ones


def test_order_time_reaches_the_tuner(capsys, captured):
    cli_main.main(["tune", "zoo:resnet18", "-t", "x86_64", "--order", "time", "--trials", "64"])
    assert captured["options"].order == "time"


def test_an_unknown_order_is_refused_by_the_parser(capsys, captured):
    with pytest.raises(SystemExit) as exit_:
        cli_main.main(["tune", "zoo:resnet18", "-t", "x86_64", "--order", "size"])
    assert exit_.value.code != 0 and "--order" in capsys.readouterr().err and not captured


def test_device_without_an_agent_is_a_one_line_error(tmp_path, capsys, captured):
    code = cli_main.main(["tune", "zoo:resnet18", "-t", "rasp4b", "--device", f"unix:{tmp_path}/no-agent.sock"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and len(err.strip().splitlines()) <= 2
    assert "no-agent.sock" in err
    assert not captured  # stopped before any tuning


@pytest.mark.parametrize(
    "argv,message",
    [
        (("--trials-per-task", "0"), "--trials-per-task must be 1 or more, not 0"),
        (("--trials", "-5"), "--trials must be 0 or more, not -5"),
        (("--threads", "0"), "threads must be 1 or more"),
    ],
)
def test_budget_mistakes_are_one_line_errors(capsys, captured, argv, message):
    code = cli_main.main(["tune", "zoo:resnet18", "-t", "x86_64", *argv])
    err = capsys.readouterr().err
    assert code != 0 and message in err and "Traceback" not in err
    assert not captured


def test_merge_writes_one_database(tmp_path, capsys):
    pytest.importorskip("tvm")
    from edgekiln.compile.backends.tvm.tuning import ffi_writes_databases
    from tests.unit.compile.test_tvm_tuning import _matmul, _write

    if ffi_writes_databases():
        pytest.skip(ffi_writes_databases())

    one = _write(tmp_path / "one", [(_matmul(16), 2e-3), (_matmul(16), 1e-3)])
    two = _write(tmp_path / "two", [(_matmul(32), 3e-3)])
    assert cli_main.main(["tune-merge", str(tmp_path / "out"), str(one), str(two), "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts == {"database": str(tmp_path / "out"), "records_read": 3, "workloads": 2, "records_written": 2}
    code = cli_main.main(["tune-merge", str(tmp_path / "out"), str(tmp_path / "missing")])
    assert code != 0 and "holds no tuning records" in capsys.readouterr().err

"""How ``edgekiln`` reports errors: one line and the error's exit code, or with ``--debug`` /
``EDGEKILN_DEBUG=1`` the whole traceback, including exceptions hidden by ``raise ... from None``."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import edgekiln
from edgekiln.cli import main as cli_main
from edgekiln.errors import InternalError, UserError

# The child imports the edgekiln this test imported.
PACKAGE_ROOT = Path(edgekiln.__file__).resolve().parent.parent


def _fail_quoting_a_foreign_error(args) -> int:
    try:
        {}["the original cause"]
    except KeyError:
        raise UserError("the model has no such input", hint="check its name") from None
    return 0


def _fail_with_a_bug(args) -> int:
    raise InternalError("a bug: the stage table is empty")


def _fail_unexpectedly(args) -> int:
    try:
        int("not a number")
    except ValueError:
        raise RuntimeError("wrapped") from None
    return 0


@pytest.fixture
def boom(monkeypatch):
    """A subcommand ``boom ACTION`` whose actions raise, registered the way real ones are."""

    def register(subparsers):
        parser = subparsers.add_parser("boom", help="fail on purpose")
        actions = parser.add_subparsers(dest="boom_action", required=True)
        for name, func in (
            ("user", _fail_quoting_a_foreign_error),
            ("internal", _fail_with_a_bug),
            ("unexpected", _fail_unexpectedly),
        ):
            actions.add_parser(name).set_defaults(func=func)

    module = types.ModuleType("edgekiln.cli.boom")
    module.register = register
    monkeypatch.setitem(sys.modules, "edgekiln.cli.boom", module)
    monkeypatch.setattr(cli_main, "COMMANDS", ("boom",))
    monkeypatch.delenv(cli_main.DEBUG_ENV, raising=False)


def _run(capsys, *argv):
    code = cli_main.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_user_error_is_one_line_with_its_exit_code(boom, capsys):
    code, out, err = _run(capsys, "boom", "user")
    assert code == UserError.exit_code == 2
    assert out == ""
    assert err == "edgekiln boom: error: the model has no such input (check its name)\n"


@pytest.mark.parametrize(
    "argv",
    [
        ("--debug", "boom", "user"),
        ("boom", "--debug", "user"),
        ("boom", "user", "--debug"),
    ],
)
def test_debug_flag_anywhere_shows_the_hidden_original_traceback(boom, capsys, argv):
    code, _, err = _run(capsys, *argv)
    assert code == 2
    # The KeyError that `from None` hid comes first, with its own frame, then the UserError.
    assert err.count("Traceback (most recent call last):") == 2
    assert err.index("KeyError: 'the original cause'") < err.index("edgekiln.errors.UserError: the model has no such")
    assert "in _fail_quoting_a_foreign_error" in err
    assert err.endswith("edgekiln boom: error: the model has no such input (check its name)\n")


@pytest.mark.parametrize("value, shown", [("1", True), ("yes", True), ("0", False), ("", False)])
def test_debug_environment_variable(boom, capsys, monkeypatch, value, shown):
    monkeypatch.setenv("EDGEKILN_DEBUG", value)
    code, _, err = _run(capsys, "boom", "user")
    assert code == 2
    assert ("KeyError: 'the original cause'" in err) is shown
    assert (len(err.splitlines()) == 1) is not shown


def test_internal_error_keeps_its_traceback_and_exit_code(boom, capsys):
    code, _, err = _run(capsys, "boom", "internal")
    assert code == InternalError.exit_code == 70
    assert "Traceback (most recent call last):" in err and "in _fail_with_a_bug" in err
    assert err.endswith("edgekiln boom: error: a bug: the stage table is empty\n")


def test_unexpected_exception_propagates_without_debug_and_is_shown_whole_with_it(boom, capsys):
    with pytest.raises(RuntimeError, match="wrapped"):
        cli_main.main(["boom", "unexpected"])
    code, _, err = _run(capsys, "--debug", "boom", "unexpected")
    assert code == 70
    assert "ValueError: invalid literal for int()" in err and "RuntimeError: wrapped" in err


def test_help_mentions_debug(boom, capsys):
    with pytest.raises(SystemExit):
        cli_main.main(["--help"])
    out = capsys.readouterr().out
    assert "--debug" in out and "EDGEKILN_DEBUG=1" in out


def test_real_command_line_error_is_one_line_and_debug_shows_the_cause(tmp_path):
    not_an_artifact = tmp_path / "model.tar.gz"
    not_an_artifact.write_text("not gzip")
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}
    env.pop("EDGEKILN_DEBUG", None)
    plain = subprocess.run(
        [sys.executable, "-m", "edgekiln.cli.main", "inspect", str(not_an_artifact)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert plain.returncode == 6  # IntegrityError
    assert plain.stderr.count("\n") == 1 and "Traceback" not in plain.stderr
    assert "is not an edgekiln artifact" in plain.stderr
    debug = subprocess.run(
        [sys.executable, "-m", "edgekiln.cli.main", "inspect", str(not_an_artifact)],
        capture_output=True,
        text=True,
        env={**env, "EDGEKILN_DEBUG": "1"},
        timeout=120,
    )
    assert debug.returncode == 6
    assert "gzip.BadGzipFile: Not a gzipped file" in debug.stderr  # the cause, from the gzip stream
    assert "edgekiln.errors.IntegrityError" in debug.stderr

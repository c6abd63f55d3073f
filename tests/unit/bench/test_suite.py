"""``edgekiln suite``: suite files with model files, skips that say why and pass, failures that
fail. The compiler and the harness are replaced by stand-ins that record their calls; the real
runs are in tests/e2e/bench."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekiln.bench import suite as suite_module
from edgekiln.bench.results import BenchReport
from edgekiln.cli.main import main
from edgekiln.errors import BackendError, UserError
from edgekiln.runtime.compat import host_info

SUITE = """
[suites.ci]
description = "a user's TFLite classifier and a zoo model"
models = ["models/classifier.tflite", "mobilenet_v2"]
profiles = ["x86_64", "rasp4b"]
backends = ["onnxruntime"]
baselines = ["onnxruntime"]
runs = 3
"""


@pytest.fixture
def suite_file(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "classifier.tflite").write_bytes(b"TFL3 stand-in")
    path = tmp_path / "suite.toml"
    path.write_text(SUITE)
    return path


@pytest.fixture
def no_ort_on_boards(monkeypatch):
    """The premise of the skip tests: the emulated boards carry no onnxruntime runtime."""
    from edgekiln.compile.backends import registry

    monkeypatch.setattr(type(registry.get("onnxruntime")), "runs_on_emulated_board", False)


@pytest.fixture
def stand_ins(monkeypatch, make_bench, no_ort_on_boards):
    """compile_model writes a file; bench_artifact returns a known result for the artifact."""
    calls = {"compile": [], "bench": []}

    def compile_model(source, target, output, *, name=None, options=None, **kwargs):
        calls["compile"].append((source, target, name, options.backend))
        Path(output).write_bytes(b"artifact")

    def bench_artifact(path, options, progress=None):
        calls["bench"].append((Path(path).name, options.baseline_model))
        model = Path(path).name.split("-")[0]
        return make_bench(model=model)

    monkeypatch.setattr("edgekiln.compile.api.compile_model", compile_model)
    monkeypatch.setattr(suite_module, "bench_artifact", bench_artifact)
    return calls


def test_models_are_zoo_names_or_files_relative_to_the_suite_file(suite_file):
    suite = suite_module.load_suite(suite_file)
    assert suite.name == "ci"
    tflite, zoo = suite.models
    assert (tflite.name, tflite.ref, tflite.is_zoo) == (
        "classifier",
        str(suite_file.parent / "models" / "classifier.tflite"),
        False,
    )
    assert (zoo.name, zoo.ref, zoo.is_zoo) == ("mobilenet_v2", "zoo:mobilenet_v2", True)


def test_bad_suite_files_are_user_errors(tmp_path, suite_file):
    missing = tmp_path / "missing.toml"
    missing.write_text(SUITE.replace("models/classifier.tflite", "models/nothing.onnx"))
    with pytest.raises(UserError, match="neither a zoo model nor an existing file"):
        suite_module.load_suite(missing)
    two = tmp_path / "two.toml"
    two.write_text(SUITE + SUITE.replace("suites.ci", "suites.nightly"))
    with pytest.raises(UserError, match="defines 2 suites: ci, nightly") as info:
        suite_module.load_suite(two)
    assert "--suite NAME" in info.value.one_line()
    assert suite_module.load_suite(two, "nightly").name == "nightly"
    with pytest.raises(UserError, match="unknown zoo model"):
        bad = tmp_path / "bad.toml"
        bad.write_text(SUITE.replace('"mobilenet_v2"', '"zoo:mobilenet_v9"'))
        suite_module.load_suite(bad)


@pytest.mark.skipif(host_info().arch != "x86_64", reason="the suite's runnable profile is x86_64")
def test_a_combination_the_host_cannot_run_is_skipped_with_why_and_exits_0(suite_file, tmp_path, stand_ins, capsys):
    out = tmp_path / "out"
    assert main(["suite", str(suite_file), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    # Only the x86_64 combinations were compiled and measured; the TFLite file went in as itself.
    tflite = str(suite_file.parent / "models" / "classifier.tflite")
    assert stand_ins["compile"] == [
        (tflite, "generic/x86-64-avx2", "classifier", "onnxruntime"),
        ("zoo:mobilenet_v2", "generic/x86-64-avx2", "mobilenet_v2", "onnxruntime"),
    ]
    assert stand_ins["bench"][0][1] == tflite  # the baselines run the user's own file
    report = BenchReport.load(out / "results.json")
    assert report.command == f"edgekiln suite {suite_file} --out {out}"
    assert [s.status for s in report.skipped] == ["skipped", "skipped"]
    assert [s.key for s in report.skipped] == [
        "classifier/raspberry-pi/4b-aarch64/onnxruntime/fp32/cpu/single-stream/b1",
        "mobilenet_v2/raspberry-pi/4b-aarch64/onnxruntime/fp32/cpu/single-stream/b1",
    ]
    reason = report.skipped[0].reason
    assert "emulated board carries no onnxruntime runtime" in reason and "run it on the board" in reason
    assert "skipped: this host cannot execute raspberry-pi/4b-aarch64" in err
    assert "(2 measured, 2 skipped, 0 failed)" in err
    assert {p.name for p in out.iterdir()} >= {"results.json", "report.md", "latency.png", "ratios.png"}
    assert "## Not benchmarked" in (out / "report.md").read_text()


@pytest.mark.skipif(host_info().arch != "x86_64", reason="the suite's runnable profile is x86_64")
def test_a_real_failure_still_fails_the_job(suite_file, tmp_path, stand_ins, monkeypatch, capsys):
    def broken(source, target, output, **kwargs):
        raise BackendError("litert cannot convert node Slice_3", hint="try --backend tvm")

    monkeypatch.setattr("edgekiln.compile.api.compile_model", broken)
    assert main(["suite", str(suite_file), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "FAILED: litert cannot convert node Slice_3 (try --backend tvm)" in err
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [s["status"] for s in report["skipped"]] == ["failed", "skipped", "failed", "skipped"]


@pytest.mark.skipif(host_info().arch != "x86_64", reason="the suite's runnable profile is x86_64")
def test_the_gate_runs_after_the_suite(suite_file, tmp_path, stand_ins, make_bench, make_report, capsys):
    stored = tmp_path / "stored.json"
    fast = tuple(t / 1.3 for t in (100.0, 110.0, 120.0, 105.0, 115.0))
    make_report(make_bench(model="classifier", cand_ms=fast)).save(stored)
    # The stored classifier result is keyed like the new one; the model is 30% slower now.
    assert main(["suite", str(suite_file), "--out", str(tmp_path / "out"), "--gate", str(stored)]) == 1
    err = capsys.readouterr().err
    assert "regression gate FAILED" in err and "REGRESSED classifier/" in err
    assert json.loads((tmp_path / "out" / "gate.json").read_text())["passed"] is False


def test_the_old_script_forwards_to_edgekiln_suite(tmp_path, suite_file, monkeypatch):
    import importlib.util

    root = Path(__file__).resolve().parents[3]
    spec = importlib.util.spec_from_file_location("run_suite_script", root / "benchmarks" / "run_suite.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    seen = []
    monkeypatch.setattr("edgekiln.cli.main.main", lambda argv: seen.append(argv) or 0)
    assert script.main(["--suite", "ci", "--suite-file", str(suite_file), "--out", "o", "--runs", "3"]) == 0
    assert seen == [["suite", str(suite_file), "--suite", "ci", "--out", "o", "--runs", "3"]]


@pytest.mark.skipif(host_info().arch != "x86_64", reason="rasp4b is another CPU on x86-64 hosts")
def test_another_cpu_runs_on_its_emulated_board_only_when_it_can(suite_file, monkeypatch, no_ort_on_boards):
    suite = suite_module.load_suite(suite_file)
    combo = suite_module.Combination(suite.models[0], "rasp4b", "onnxruntime", "fp32", 1)
    profile, how, why = suite_module.runnable(combo, suite)
    assert profile.id == "raspberry-pi/4b-aarch64" and how is None
    assert "its emulated board carries no onnxruntime runtime" in why
    # A backend the board carries: it runs there when the board is built, else it is skipped saying so.
    tvm = suite_module.Combination(suite.models[0], "rasp4b", "tvm", "fp32", 1)
    monkeypatch.setattr("edgekiln.execute.runners.emulated_board_problem", lambda profile: None)
    assert suite_module.runnable(tvm, suite)[1:] == ("emulated: correctness only", None)
    not_built = "its emulated board is not built (run `edgekiln emulate rasp4b --info` once)"
    monkeypatch.setattr("edgekiln.execute.runners.emulated_board_problem", lambda profile: not_built)
    how, why = suite_module.runnable(tvm, suite)[1:]
    assert how is None and why.endswith(f"and {not_built}")

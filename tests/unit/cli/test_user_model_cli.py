"""A user's classifier through the commands: ``compile --preprocess --labels --rtol`` and
``run`` on a JPEG, with scores reported for what they are (onnxruntime: no TVM build)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from edgekiln.cli.main import main
from edgekiln.runtime.preprocess import preprocess
from tests.data.classifiers import write_classifier, write_jpeg

LABELS = ["cat", "dog", "fox", "owl", "bee"]


@pytest.fixture
def files(tmp_path):
    (tmp_path / "labels.txt").write_text("\n".join(LABELS) + "\n")
    return tmp_path, write_jpeg(tmp_path / "photo.jpg")


def _compile(capsys, tmp_path, model, *extra):
    out = tmp_path / f"{model.stem}.tar.gz"
    argv = ["compile", str(model), "-t", "x86_64", "--backend", "onnxruntime", "-o", str(out), *extra]
    code = main(argv)
    return code, out, capsys.readouterr()


def test_a_softmax_model_reports_its_own_probability(files, capsys):
    tmp_path, photo = files
    model = write_classifier(tmp_path / "softmax.onnx", softmax=True)
    code, artifact, captured = _compile(
        capsys, tmp_path, model, "--preprocess", "imagenet-torch", "--labels", str(tmp_path / "labels.txt")
    )
    assert code == 0, captured.err
    assert "max rel diff" in captured.out and "rtol 1e-05" in captured.out
    assert "second reference: torch" in captured.out
    assert main(["run", str(artifact), str(photo), "--json", "--top-k", "5"]) == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert result["scores"] == "probabilities"
    spec = {"layout": "NCHW", "resize": 37, "crop": 32, "scale": 1 / 255}
    spec.update(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    own = ort.InferenceSession(str(model)).run(None, {"image": preprocess(photo, spec, (1, 3, 32, 32))})[0][0]
    best = int(np.argmax(own))
    assert result["top"][0]["label"] == LABELS[best]
    assert result["top"][0]["probability"] == pytest.approx(float(own[best]), abs=1e-5)  # not softmax(softmax)
    assert main(["run", str(artifact), str(photo)]) == 0
    text = capsys.readouterr().out
    assert "the model's own probabilities" in text and f"1. {LABELS[best]}" in text


def test_a_logit_model_is_reported_as_logits(files, capsys):
    tmp_path, photo = files
    model = write_classifier(tmp_path / "logits.onnx")
    code, artifact, captured = _compile(
        capsys,
        tmp_path,
        model,
        "--preprocess",
        '{"preset": "imagenet-caffe"}',
        "--labels",
        str(tmp_path / "labels.txt"),
    )
    assert code == 0, captured.err
    assert main(["run", str(artifact), str(photo), "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert result["scores"] == "logits" and {t["label"] for t in result["top"]} == set(LABELS)
    assert all("logit" in t for t in result["top"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preprocess", "{bad"], "--preprocess is not valid JSON"),
        (["--preprocess", "imagenet-pytorch"], "unknown preprocessing preset 'imagenet-pytorch'"),
        (["--labels", "missing.txt"], "cannot read the labels file missing.txt"),
        (["--labels", "three.txt"], "gives 3 class names; the model's output 'scores' has 5 classes"),
        (["--rtol", "-1"], "tolerances must be >= 0"),
    ],
)
def test_bad_inputs_fail_in_one_line_with_a_hint(files, capsys, monkeypatch, args, message):
    tmp_path, _ = files
    monkeypatch.chdir(tmp_path)
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    code, out, captured = _compile(capsys, tmp_path, write_classifier(tmp_path / "m.onnx"), *args)
    assert code == 2 and not out.exists()
    (line,) = [line for line in captured.err.splitlines() if "error" in line]
    assert message in line and line.endswith(")")  # the hint, in parentheses
    assert "Traceback" not in captured.err

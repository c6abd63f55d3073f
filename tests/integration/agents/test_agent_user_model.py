"""A user's own ONNX classifier (not the zoo's), compiled with ``--preprocess imagenet-torch
--labels labels.txt``, names the classes of a JPEG photo through ``edgekiln run``, through
``agent-ctl predict`` on a running agent, and from Python."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

import edgekiln
from edgekiln.agents.client import AgentClient
from edgekiln.cli.main import main
from tests.data.classifiers import write_classifier

LABELS = ["tabby", "terrier", "red fox", "barn owl", "honey bee"]


def _chelsea_jpeg(path: Path) -> Path:
    from skimage import data

    Image.fromarray(data.chelsea()).save(path, "JPEG", quality=92)
    return path


def test_a_users_classifier_names_classes_everywhere(tmp_path, agent_factory, capsys):
    model = write_classifier(tmp_path / "user_classifier.onnx", classes=len(LABELS), side=64)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    photo = _chelsea_jpeg(tmp_path / "chelsea.jpg")
    artifact = tmp_path / "models" / "user.tar.gz"
    artifact.parent.mkdir()
    argv = ["compile", str(model), "-t", "x86_64", "--backend", "onnxruntime", "-o", str(artifact)]
    assert main([*argv, "--preprocess", "imagenet-torch", "--labels", str(labels), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["validation"]["status"] == "passed" and summary["validation"]["second_reference"]

    # Python
    with edgekiln.Model(artifact) as python_model:
        top = python_model.predict(photo, top_k=3)
        gray = np.asarray(Image.open(photo).convert("L"))  # a 2-D array, as a grayscale file
        gray_top = python_model.predict(gray, top_k=1)
    assert [t["label"] for t in top] and all(t["label"] in LABELS for t in top)
    assert gray_top[0]["label"] in LABELS

    # edgekiln run
    assert main(["run", str(artifact), str(photo), "--top-k", "3"]) == 0
    printed = capsys.readouterr().out
    assert f"1. {top[0]['label']}" in printed and f"3. {top[2]['label']}" in printed

    # the agent
    agent = agent_factory(agent={"model_dirs": [str(artifact.parent)]})
    socket = str(agent.config.agent.socket)
    assert main(["agent-ctl", "--socket", socket, "load", str(artifact), "user"]) == 0
    capsys.readouterr()
    assert main(["agent-ctl", "--socket", socket, "--json", "predict", "user", str(photo), "--top-k", "3"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["scores"] == "logits"
    assert [t["label"] for t in answer["top"]] == [t["label"] for t in top]
    np.testing.assert_allclose([t["probability"] for t in answer["top"]], [t["probability"] for t in top], rtol=1e-5)
    with AgentClient(socket) as client:
        assert client.predict_image("user", gray, top_k=1)["top"][0]["label"] == gray_top[0]["label"]

"""Tiny ONNX models built in code, and a profile narrowed to the fast backends."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import numpy as np
import pytest


def write_model(path: Path, op: str = "MatMul") -> Path:
    """x [1, 8] → y [1, 4]: a MatMul with seeded weights, or ``op`` (a unary operator) after it."""
    import onnx
    from onnx import TensorProto, helper

    weights = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y" if op == "MatMul" else "h"])]
    if op != "MatMul":
        nodes.append(helper.make_node(op, ["h"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor("w", TensorProto.FLOAT, [8, 4], weights.ravel())],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    return write_model(tmp_path / "tiny.onnx")


@pytest.fixture
def fast_profile(monkeypatch):
    """x86_64 with only the given backends, in that order (no TVM build in unit tests)."""
    from edgekiln.compile import api
    from edgekiln.device_profiles import get_profile

    def narrow(*backends: str):
        profile = dataclasses.replace(get_profile("x86_64"), backends=tuple(backends))
        monkeypatch.setattr(api, "get_profile", lambda name: profile)
        return profile

    return narrow


class RecordingProgress:
    """The steps a compile announced, in order."""

    def __init__(self) -> None:
        self.steps: list[str] = []

    @contextlib.contextmanager
    def step(self, description: str):
        self.steps.append(description)
        yield

    def done(self, description: str, elapsed: float) -> None:
        self.steps.append(description)

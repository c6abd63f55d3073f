"""Shared fixtures: compiled artifacts are built once per session and reused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def nvcc_available() -> bool:
    return shutil.which("nvcc") is not None or Path("/usr/local/cuda/bin/nvcc").exists()


@pytest.fixture(scope="session")
def compiled(tmp_path_factory):
    """compiled(model, target, **kwargs) -> CompiledArtifact, cached per (model, target, kwargs)."""
    from edgekiln.compile.api import compile_model

    cache: dict[tuple, object] = {}
    root = tmp_path_factory.mktemp("artifacts")

    def build(model: str, target: str, **kwargs):
        from edgekiln.compile.api import CompileOptions

        # The tvm backend unless a test asks otherwise: most tests look at TVM's files.
        kwargs.setdefault("options", CompileOptions(backend="tvm"))
        key = (model, target, repr(sorted(kwargs.items())))
        if key not in cache:
            name = f"{model.replace(':', '_').replace('/', '_')}-{target}-{len(cache)}.tar.gz"
            cache[key] = compile_model(model, target, root / name, **kwargs)
        return cache[key]

    return build

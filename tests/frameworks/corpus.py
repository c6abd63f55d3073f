"""The conformance corpus: every model file of it built at run time from seeded weights,
and one compile of a model with one backend, recorded as a row of the conformance table.

Three sources: the torchvision classification families (``corpus_torch``), Keras
applications (``corpus_keras``, built by TensorFlow in a child process) and the classic
ONNX Model Zoo CNNs at opsets 7-9 (``corpus_classic``).  Used by the slow-tier test
``tests/integration/compile/test_conformance.py`` and by ``devtools/conformance.py``, which
writes the table the README shows.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.frameworks import corpus_classic, corpus_keras, corpus_torch

BACKENDS = ("tvm", "onnxruntime", "litert", "openvino")
TARGET = "x86_64"
MODELS = (
    *(f"torchvision/{name}" for name in corpus_torch.FAMILIES),
    *(f"keras/{name}" for name in corpus_keras.APPLICATIONS),
    *(f"onnx-zoo/{name}" for name in corpus_classic.MODELS),
)


@dataclass(frozen=True)
class Row:
    """One model compiled with one backend: what the README table shows."""

    model: str
    backend: str
    compiled: bool
    validated: bool
    max_abs_diff: float | None
    seconds: float
    error: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def build_all(out_dir: Path) -> dict[str, Path]:
    """Every corpus model as a file under ``out_dir``, by corpus name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for name in corpus_torch.FAMILIES:
        files[f"torchvision/{name}"] = corpus_torch.export(name, out_dir)
    for name in corpus_classic.MODELS:
        files[f"onnx-zoo/{name}"] = corpus_classic.export(name, out_dir)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    names = list(corpus_keras.APPLICATIONS)
    subprocess.run(
        [sys.executable, str(Path(corpus_keras.__file__)), str(out_dir), *names],
        check=True,
        env=env,
        capture_output=True,
        timeout=600,
    )
    for name in names:
        files[f"keras/{name}"] = out_dir / f"keras_{name}.keras"
    return files


def compile_one(model: str, path: Path, backend: str, out_dir: Path) -> Row:
    """Compile ``path`` for x86-64 with ``backend``, validated against ONNX Runtime."""
    from edgekiln.compile.api import CompileOptions, compile_model
    from edgekiln.errors import EdgekilnError

    started = time.perf_counter()
    target = out_dir / f"{model.replace('/', '_')}-{backend}.tar.gz"
    try:
        artifact = compile_model(path, TARGET, target, options=CompileOptions(backend=backend))
    except EdgekilnError as exc:
        return Row(model, backend, False, False, None, round(time.perf_counter() - started, 1), exc.one_line())
    validation = artifact.manifest.validation
    return Row(
        model,
        backend,
        True,
        validation.status == "passed",
        validation.max_abs_diff,
        round(time.perf_counter() - started, 1),
        validation.reason if validation.status != "passed" else None,
    )

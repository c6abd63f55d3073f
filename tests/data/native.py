"""Helpers of the native-runtime tests: a small classifier built in code, C programs built
against a native runtime, and a library that leaves a mark when something maps it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from edgekiln.runtime.native import SOURCE_DIR, NativeRuntime

C_TEST = SOURCE_DIR / "tests" / "test_dlr_api.c"
EXAMPLE = SOURCE_DIR / "examples" / "classify.c"
# The marker library's constructor writes this file's path from the environment.
MARKER_ENV = "EDGEKILN_TEST_MARKER"
_MARKER_SOURCE = f"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void mark(void) {{
  const char* path = getenv("{MARKER_ENV}");
  FILE* f = path ? fopen(path, "w") : NULL;
  if (f) fclose(f);
}}
"""


def small_classifier(path: Path) -> Path:
    """A conv → relu → global pool → gemm classifier with 10 classes, as ONNX, seeded weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    weights = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal((8,)).astype(np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((10, 8)).astype(np.float32), "fc"),
        numpy_helper.from_array(rng.standard_normal((10,)).astype(np.float32), "fcb"),
        numpy_helper.from_array(np.array([1, 8], dtype=np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Reshape", ["p", "flat"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        initializer=weights,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def build_c(runtime: NativeRuntime, source: Path, output: Path, compiler: str) -> Path:
    """``source`` compiled with ``compiler`` against the runtime's header and library."""
    cmd = [
        compiler, "-O2", f"-I{runtime.root / 'include'}", str(source), f"-L{runtime.root / 'lib'}", "-ledgekiln",
        f"-Wl,-rpath,{runtime.root / 'lib'}", "-o", str(output),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return output


def marker_library(output: Path, compiler: str = "gcc") -> Path:
    """A shared library whose constructor creates the file named by $EDGEKILN_TEST_MARKER."""
    source = output.with_suffix(".c")
    source.write_text(_MARKER_SOURCE)
    proc = subprocess.run(
        [compiler, "-shared", "-fPIC", str(source), "-o", str(output)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return output

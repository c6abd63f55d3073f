"""CUDA artifacts run on an NVIDIA GPU: tvm (fp32 and fp16, one CUDA graph) and onnxruntime
(CUDA execution provider with CUDA graphs). Each replays its captured graph on new inputs,
and the compile validated it on this GPU with the stated tolerance."""

from __future__ import annotations

import numpy as np
import pytest

from edgekiln.compile.api import CompileOptions, compile_model
from edgekiln.compile.backends.tvm.backend import TVMOptions
from edgekiln.runtime.compat import cuda_info
from tests.frameworks.models import onnx_tiny_cnn

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(cuda_info() is None, reason="needs an NVIDIA GPU: CUDA artifacts run on one"),
]

BUILDS = {
    "tvm-fp32": CompileOptions(backend="tvm"),
    "tvm-fp16": CompileOptions(backend="tvm", backend_options=TVMOptions(precision="fp16")),
    "onnxruntime": CompileOptions(backend="onnxruntime"),
}


@pytest.mark.parametrize("build", sorted(BUILDS))
def test_cuda_artifact_replays_its_graph_on_new_inputs(build, tmp_path):
    import onnxruntime as ort

    import edgekiln

    if build == "onnxruntime" and "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed (pip install 'edgekiln[gpu]')")
    source = onnx_tiny_cnn(tmp_path / "cnn.onnx")
    artifact = compile_model(source, "h200", tmp_path / f"{build}.tar.gz", options=BUILDS[build])
    v = artifact.manifest.validation
    assert v.status == "passed" and "cuda" in v.executed_on and v.top1_agreement == 1.0
    assert v.tolerance_abs > 1e-4 if build == "tvm-fp16" else v.tolerance_abs == 1e-4
    reference = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    model = edgekiln.load(artifact.path, device="cuda")
    rng = np.random.default_rng(3)
    outputs = []
    for _ in range(3):
        x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
        (out,) = model.run([x])
        (ref,) = reference.run(None, {"x": x})
        assert np.abs(out - ref).max() <= v.tolerance_abs
        outputs.append(out)
    # A graph replayed on stale input buffers would repeat the first output.
    assert not np.allclose(outputs[0], outputs[1])

"""Every zoo model compiled for x86-64 matches ONNX Runtime within 1e-4 (abs), run through
the device runtime in a process that never imports the TVM compiler."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from edgekiln import zoo
from edgekiln.runtime.compat import host_info

pytestmark = pytest.mark.skipif(host_info().arch != "x86_64", reason="x86-64 artifacts run only on an x86-64 host")

# Runs an artifact exactly as a device does, and reports which heavy modules got imported.
# torch is blocked as a device would lack it: apache-tvm-ffi imports torch whenever it is
# installed (for its DLPack interop), and this test environment has torch for other tests.
DEVICE_SCRIPT = """
import json, sys
sys.modules["torch"] = None
import numpy as np
import edgekiln
model = edgekiln.load(sys.argv[1])
with np.load(sys.argv[2]) as data:
    outs = [model.run({"input": data[k]})[0] for k in sorted(data.files)]
np.save(sys.argv[3], np.stack(outs))
names = ("tvm", "onnx", "onnxruntime", "torch", "tensorflow", "edgekiln.compile")
heavy = sorted(m for m in names if sys.modules.get(m) is not None)
print(json.dumps({"heavy": heavy, "inputs": model.get_input_names(), "outputs": model.get_output_names(),
                  "dtypes": model.get_input_dtypes(), "shapes": [list(s) for s in model.get_input_shapes()]}))
"""


def run_on_device(artifact, inputs: list[np.ndarray], tmp_path) -> tuple[np.ndarray, dict]:
    np.savez(tmp_path / "in.npz", **{f"{i:02d}": x for i, x in enumerate(inputs)})
    proc = subprocess.run(
        [sys.executable, "-c", DEVICE_SCRIPT, str(artifact), str(tmp_path / "in.npz"), str(tmp_path / "out.npy")],
        capture_output=True,
        text=True,
        check=True,
    )
    return np.load(tmp_path / "out.npy"), json.loads(proc.stdout)


@pytest.mark.parametrize("name", zoo.MODEL_NAMES)
def test_zoo_model_matches_onnxruntime(name, compiled, tmp_path):
    artifact = compiled(f"zoo:{name}", "x86_64")
    validation = artifact.manifest.validation
    assert validation.status == "passed"
    assert validation.max_abs_diff <= 1e-4 and validation.top1_agreement == 1.0

    rng = np.random.default_rng(1234)
    inputs = [rng.standard_normal((1, 3, 224, 224)).astype(np.float32) for _ in range(2)]
    session = ort.InferenceSession(zoo.build(name).SerializeToString(), providers=["CPUExecutionProvider"])
    expected = np.stack([session.run(None, {"input": x})[0] for x in inputs])
    got, info = run_on_device(artifact.path, inputs, tmp_path)

    assert got.shape == expected.shape == (2, 1, 1000)
    assert np.max(np.abs(got - expected)) <= 1e-4
    assert (got.argmax(-1) == expected.argmax(-1)).all()
    assert info["heavy"] == []
    assert info["inputs"] == ["input"] and info["outputs"] == ["logits"]
    assert info["dtypes"] == ["float32"] and info["shapes"] == [[1, 3, 224, 224]]


def test_artifact_records_what_the_device_needs(compiled):
    m = compiled("zoo:mobilenet_v2", "x86_64").manifest
    assert m.profile == "generic/x86-64-avx2" and m.backend == "tvm"
    assert m.target_triple == "x86_64-linux-gnu"
    assert m.runtime.arch == "x86_64" and m.runtime.glibc == "2.28"
    assert m.runtime.library_version == m.compiler["tvm"]
    assert "avx2" in m.runtime.cpu_features
    # An AVX-512 build rides along where ml_c5's shipped records cover the model and this
    # host can validate it; the manifest says which.
    (variant,) = m.tuning["variants"]
    extra = {"model-library-variant"} if variant["built"] else set()
    assert {f.role for f in m.files} == {"model-library", "runtime-library", "labels"} | extra
    assert m.model.params == 3_504_872 and m.model.macs == zoo.info("mobilenet_v2").published_macs
    assert m.preprocessing["crop"] == 224


def test_predict_uses_manifest_preprocessing_and_labels(compiled):
    import edgekiln

    artifact = compiled("zoo:mobilenet_v2", "x86_64")
    code = (
        "import json, sys, edgekiln, edgekiln.zoo as z\n"
        "m = edgekiln.load(sys.argv[1])\n"
        "print(json.dumps(m.predict(str(z.sample_image_path()), top_k=5)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(artifact.path)], capture_output=True, text=True, check=True)
    top = json.loads(proc.stdout)
    labels = zoo.imagenet_labels()
    assert len(top) == 5
    assert all(t["label"] == labels[t["index"]] for t in top)
    probs = [t["probability"] for t in top]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-9
    assert edgekiln.__version__


def test_unaligned_small_inputs_run(tmp_path):
    """numpy guarantees 16-byte alignment, TVM kernels use 32/64-byte aligned loads: the
    executor must copy inputs into runtime-allocated tensors (this crashed before it did)."""
    import onnx
    from onnx import TensorProto, helper

    from edgekiln.compile.api import CompileOptions, compile_model

    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["r"]), helper.make_node("Sigmoid", ["r"], ["out"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "s.onnx"))
    artifact = compile_model(
        tmp_path / "s.onnx", "x86_64", tmp_path / "s.tar.gz", options=CompileOptions(backend="tvm")
    )
    code = (
        "import sys, numpy as np, edgekiln\n"
        "m = edgekiln.load(sys.argv[1])\n"
        "for offset in range(1, 16):\n"
        "    buf = np.zeros(192 + 16, dtype=np.float32)\n"
        "    x = buf[offset:offset + 192].reshape(1, 3, 8, 8)\n"
        "    x[...] = np.linspace(-2, 2, 192, dtype=np.float32).reshape(1, 3, 8, 8)\n"
        "    y = m.run([x])[0]\n"
        "    assert np.allclose(y, 1 / (1 + np.exp(-np.maximum(x, 0))), atol=1e-6), offset\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(artifact.path)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-500:]

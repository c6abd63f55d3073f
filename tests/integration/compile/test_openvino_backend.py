"""OpenVINO artifacts for x86-64: the IR converted at compile time, run the way a device runs
it (no compiler, onnx or ONNX Runtime imported) within 1e-4 of ONNX Runtime; int8 from the
QDQ model; and the one-line errors of a device that cannot load one."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tarfile
from importlib import metadata

import numpy as np
import onnxruntime as ort
import pytest

from edgekiln import zoo
from edgekiln.artifact.manifest import Manifest
from edgekiln.compile.api import CompileOptions
from edgekiln.compile.quantize import QuantizeOptions
from edgekiln.errors import CompatibilityError, DependencyError
from edgekiln.runtime.compat import host_info
from edgekiln.runtime.executors.openvino import OpenVINOExecutor, cpu_config
from tests.conftest import run_artifact

pytestmark = pytest.mark.skipif(host_info().arch != "x86_64", reason="x86-64 artifacts run only on an x86-64 host")
# An installed extra: missing must fail, not skip. openvino itself is never imported in this
# process: the test session also runs TVM's MetaSchedule, which an imported openvino left
# aborting on a closed capture stream (the backend converts in a child process for that reason).
OPENVINO_VERSION = metadata.version("openvino")

OPENVINO = CompileOptions(backend="openvino")
DEVICE_SCRIPT = """
import json, sys
import numpy as np
import edgekiln
model = edgekiln.load(sys.argv[1])
with np.load(sys.argv[2]) as data:
    outs = [model.run({"input": data[k]})[0] for k in sorted(data.files)]
np.save(sys.argv[3], np.stack(outs))
heavy = sorted(m for m in ("tvm", "onnx", "onnxruntime", "torch", "tensorflow", "edgekiln.compile") if m in sys.modules)
print(json.dumps({"heavy": heavy, "openvino": "openvino" in sys.modules, "outputs": model.get_output_names()}))
"""


def _inputs(count: int, seed: int = 7) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, 3, 224, 224)).astype(np.float32) for _ in range(count)]


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18"])
def test_openvino_artifact_matches_onnxruntime_on_a_device(name, compiled, tmp_path):
    artifact = compiled(f"zoo:{name}", "x86_64", options=OPENVINO)
    m = artifact.manifest
    assert m.backend == "openvino" and m.validation.status == "passed"
    assert {f.path for f in m.files} >= {"model.xml", "model.bin"}
    assert m.runtime.python_packages[0].startswith("openvino>=") and m.runtime.library == "openvino"
    assert m.backend_options["plugin"] == {
        "device": "CPU",
        "inference_precision": "f32",
        "performance_hint": "latency",
        "inference_threads": 4,  # the profile's cores; the device caps it at its own CPUs
    }
    inputs = _inputs(2)
    np.savez(tmp_path / "in.npz", **{f"{i:02d}": x for i, x in enumerate(inputs)})
    proc = subprocess.run(
        [sys.executable, "-c", DEVICE_SCRIPT, str(artifact.path), str(tmp_path / "in.npz"), str(tmp_path / "o.npy")],
        capture_output=True,
        text=True,
        check=True,
    )
    info, got = json.loads(proc.stdout), np.load(tmp_path / "o.npy")
    session = ort.InferenceSession(zoo.build(name).SerializeToString(), providers=["CPUExecutionProvider"])
    expected = np.stack([session.run(None, {"input": x})[0] for x in inputs])
    assert got.shape == expected.shape == (2, 1, 1000)
    assert np.max(np.abs(got - expected)) <= 1e-4
    assert info == {"heavy": [], "openvino": True, "outputs": ["logits"]}


def test_int8_openvino_artifact_passes_the_gate_at_a_quarter_of_the_size(compiled, tmp_path):
    calibration = tmp_path / "cal.npy"
    np.save(calibration, np.concatenate(_inputs(8, seed=3)))
    fp32 = compiled("zoo:mobilenet_v2", "x86_64", options=OPENVINO)
    int8 = compiled(
        "zoo:mobilenet_v2",
        "x86_64",
        options=dataclasses.replace(OPENVINO, quantize=QuantizeOptions(mode="int8", calibration=str(calibration))),
    )
    assert int8.manifest.backend == "openvino" and int8.manifest.quantization["accuracy_gate"]["passed"]
    assert int8.manifest.validation.status == "passed" and int8.manifest.validation.top1_agreement == 1.0
    assert int8.path.stat().st_size < 0.4 * fp32.path.stat().st_size


def _extracted(artifact, tmp_path):
    with tarfile.open(artifact.path) as tar:
        tar.extractall(tmp_path, filter="data")
    return Manifest.from_json((tmp_path / "manifest.json").read_text())


# Loads the extracted artifact at argv[1] with its manifest changed as argv[2] says, in a
# process of its own, and prints the error's class and message.
LOAD_SCRIPT = """
import dataclasses, sys
from pathlib import Path
from edgekiln.artifact.manifest import Manifest
from edgekiln.errors import EdgekilnError
from edgekiln.runtime.executors.openvino import OpenVINOExecutor
root = Path(sys.argv[1])
manifest = Manifest.from_json((root / "manifest.json").read_text())
if sys.argv[2] == "rename":
    manifest = dataclasses.replace(manifest, outputs=[dataclasses.replace(t, name="scores") for t in manifest.outputs])
try:
    OpenVINOExecutor(manifest, root, "cpu")
    print("loaded")
except EdgekilnError as exc:
    print(type(exc).__name__, exc)
"""


def _load_elsewhere(root, change: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(root), change], capture_output=True, text=True, check=True
    )
    return proc.stdout.strip()


def test_a_device_with_an_older_openvino_or_asking_for_cuda_gets_one_line(compiled, tmp_path):
    artifact = compiled("zoo:mobilenet_v2", "x86_64", options=OPENVINO)
    manifest = _extracted(artifact, tmp_path)
    newer = dataclasses.replace(manifest.runtime, library_version="9999.0.0")
    with pytest.raises(CompatibilityError, match=rf"needs openvino >= 9999\.0\.0; this device has {OPENVINO_VERSION}"):
        OpenVINOExecutor(dataclasses.replace(manifest, runtime=newer), tmp_path, "cpu")
    with pytest.raises(CompatibilityError, match="OpenVINO artifacts run on the CPU"):
        OpenVINOExecutor(manifest, tmp_path, "cuda")
    assert _load_elsewhere(tmp_path, "none") == "loaded"
    assert _load_elsewhere(tmp_path, "rename") == (
        "CompatibilityError the OpenVINO model's tensors (logits) do not match the manifest's (scores)"
    )
    (tmp_path / "model.xml").write_text("<net><layers><layer id='0' type='Nonsense'/></layers></net>")
    assert _load_elsewhere(tmp_path, "none").startswith("CompatibilityError OpenVINO cannot load the model")


def test_without_openvino_the_device_is_told_what_to_install(compiled, tmp_path, monkeypatch):
    manifest = _extracted(compiled("zoo:mobilenet_v2", "x86_64", options=OPENVINO), tmp_path)
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(DependencyError, match="needs openvino") as err:
        OpenVINOExecutor(manifest, tmp_path, "cpu")
    assert err.value.hint == "pip install 'edgekiln[openvino]'"


def test_cpu_config_holds_fp32_and_never_asks_for_more_threads_than_cpus():
    import os

    cpus = len(os.sched_getaffinity(0))
    assert cpu_config(None) == {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    assert cpu_config(64, "throughput")["INFERENCE_NUM_THREADS"] == cpus
    assert cpu_config(64, "throughput")["PERFORMANCE_HINT"] == "THROUGHPUT"
    assert cpu_config(1)["INFERENCE_NUM_THREADS"] == 1


def test_several_inputs_and_outputs_keep_the_manifests_order(tmp_path):
    """Two inputs and two outputs whose results differ if swapped: validation against ONNX
    Runtime passes and the device's outputs are in the manifest's order."""
    import onnx
    from onnx import TensorProto, helper

    from edgekiln.compile.api import compile_model

    shape = [1, 3, 8, 8]
    graph = helper.make_graph(
        [helper.make_node("Sub", ["b", "a"], ["b_minus_a"]), helper.make_node("Mul", ["a", "b"], ["product"])],
        "two",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("b", "a")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("product", "b_minus_a")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "two.onnx")
    artifact = compile_model(str(tmp_path / "two.onnx"), "x86_64", tmp_path / "two.tar.gz", options=OPENVINO)
    assert artifact.manifest.validation.status == "passed"
    a, b = _inputs(2, seed=11)
    a, b = a[:, :, :8, :8].copy(), b[:, :, :8, :8].copy()
    # In the manifest's input order (b, then a), in a process of its own.
    product, difference = run_artifact(artifact.path, [b, a])
    np.testing.assert_allclose(product, a * b, rtol=1e-6)
    np.testing.assert_allclose(difference, b - a, rtol=1e-6)

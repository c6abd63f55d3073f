"""The GPU path's options and manifests that need no TVM build: the onnxruntime artifact
for CUDA profiles, the fp16 option's checks, the fp16 validation tolerance, and the
runtime's CUDA-graph binding (against a recording stand-in for ONNX Runtime)."""

from __future__ import annotations

import numpy as np
import pytest

from edgekiln.artifact import unpack
from edgekiln.compile import validate
from edgekiln.compile.api import CompileOptions, compile_model
from edgekiln.compile.backends.onnxruntime.backend import ONNXRuntimeOptions
from edgekiln.compile.backends.tvm.backend import TVMBackend, TVMOptions
from edgekiln.device_profiles import get_profile
from edgekiln.errors import DependencyError, UserError
from edgekiln.execute.host import gpu_present
from edgekiln.execute.progress import NullProgress


def test_onnxruntime_artifact_for_h200_asks_for_cuda_graphs(tiny_model, tmp_path):
    artifact = compile_model(tiny_model, "h200", tmp_path / "ort.tar.gz", options=CompileOptions(backend="onnxruntime"))
    m = artifact.manifest
    session = m.backend_options["session"]
    assert session["providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert session["provider_options"] == {"CUDAExecutionProvider": {"enable_cuda_graph": "1"}}
    # Standard ONNX operators only: the device's CUDA provider fuses at load.
    assert session["optimization"] == "basic"
    assert m.runtime.python_packages == ("onnxruntime-gpu", "numpy")
    assert m.runtime.library_version is None and m.runtime.cuda_arch == "sm_90"
    assert any("edgekiln[gpu]" in note for note in m.runtime.notes)
    if gpu_present():
        assert m.validation.status == "passed"
    else:
        assert m.validation.status == "skipped" and "no NVIDIA GPU" in m.validation.reason


def test_onnxruntime_cuda_graph_can_be_turned_off(tiny_model, tmp_path):
    options = CompileOptions(backend="onnxruntime", backend_options=ONNXRuntimeOptions(cuda_graph=False))
    m = compile_model(tiny_model, "g4dn", tmp_path / "ort.tar.gz", options=options).manifest
    assert m.backend_options["session"]["provider_options"] == {"CUDAExecutionProvider": {"enable_cuda_graph": "0"}}
    assert m.runtime.cuda_arch == "sm_75"


def test_onnxruntime_cpu_artifact_keeps_its_version_floor(tiny_model, tmp_path):
    import onnxruntime

    m = compile_model(tiny_model, "x86_64", tmp_path / "ort.tar.gz", options=CompileOptions(backend="onnxruntime"))
    m = m.manifest
    assert m.runtime.python_packages[0] == f"onnxruntime>={onnxruntime.__version__}"
    assert "provider_options" not in m.backend_options["session"]


def test_cuda_device_without_onnxruntime_gpu_is_one_line(tiny_model, tmp_path):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA execution provider")
    from edgekiln.runtime.executors.onnxruntime import ONNXRuntimeExecutor

    artifact = compile_model(tiny_model, "h200", tmp_path / "ort.tar.gz", options=CompileOptions(backend="onnxruntime"))
    root = tmp_path / "x"
    manifest = unpack(artifact.path, root)
    with pytest.raises(DependencyError) as err:
        ONNXRuntimeExecutor(manifest, root, "cuda")
    line = err.value.one_line()
    assert "needs onnxruntime-gpu" in line and "edgekiln[gpu]" in line and "\n" not in line


def test_tvm_precision_is_checked():
    with pytest.raises(UserError, match="precision must be one of fp32, fp16"):
        TVMOptions(precision="fp8")
    options = TVMOptions.from_strings(["precision=fp16", "cuda_graph=false"])
    assert (options.precision, options.cuda_graph) == ("fp16", False)


def test_fp16_on_a_cpu_profile_is_refused_before_any_work(tmp_path):
    with pytest.raises(UserError, match="fp16 is for CUDA profiles; generic/x86-64-avx2 has no CUDA GPU"):
        TVMBackend().lower(None, get_profile("x86_64"), TVMOptions(precision="fp16"), tmp_path, NullProgress())
    assert list(tmp_path.iterdir()) == []


def test_range_tolerance_raises_the_floor_to_a_share_of_the_output_range():
    reference = [[np.array([[-2.0, 3.0, 1.0]], np.float32)], [np.array([[0.0, 6.0, 1.0]], np.float32)]]
    options = validate.ValidationOptions(tolerance_abs=1e-4)
    raised = validate.range_tolerance(options, reference, validate.FP16_RELATIVE_TOLERANCE)
    assert raised.tolerance_abs == pytest.approx(0.06)  # 1 % of the widest range, 6.0
    loose = validate.ValidationOptions(tolerance_abs=0.5)
    assert validate.range_tolerance(loose, reference, validate.FP16_RELATIVE_TOLERANCE) is loose


class _Buffer:
    def __init__(self, shape, dtype):
        self.data = np.zeros(shape, dtype)
        self.writes = 0

    def update_inplace(self, array):
        assert array.shape == self.data.shape and array.dtype == self.data.dtype
        self.data[...] = array
        self.writes += 1


class _FakeOrt:
    """ONNX Runtime's OrtValue, I/O binding and session, recording what the runtime asks."""

    def __init__(self):
        self.buffers: list[_Buffer] = []
        self.bound: dict[str, _Buffer] = {}
        self.runs = 0
        fake = self

        class OrtValue:
            @staticmethod
            def ortvalue_from_shape_and_type(shape, dtype, device, index):
                assert (device, index) == ("cuda", 0)
                fake.buffers.append(_Buffer(tuple(shape), dtype))
                return fake.buffers[-1]

        self.OrtValue = OrtValue

    def io_binding(self):
        return self

    def bind_ortvalue_input(self, name, value):
        self.bound[name] = value

    bind_ortvalue_output = bind_ortvalue_input

    def run_with_iobinding(self, binding):
        self.runs += 1
        self.bound["y"].data[...] = self.bound["x"].data.sum()

    def copy_outputs_to_cpu(self):
        return [self.bound["y"].data.copy()]


def test_cuda_graph_run_binds_fixed_buffers_and_captures_at_load():
    from edgekiln.artifact.manifest import TensorSpec
    from edgekiln.runtime.executors.onnxruntime import _CudaGraphRun

    class Manifest:
        inputs = (TensorSpec("x", "float32", (1, 8)),)
        outputs = (TensorSpec("y", "float32", (1, 4)),)

    fake = _FakeOrt()
    run = _CudaGraphRun(fake, fake, Manifest())
    assert fake.runs == 2  # one plain run, then the capture, both at load
    x_buffer = fake.bound["x"]
    (out,) = run.run([np.full((1, 8), 0.5, np.float32)])
    assert np.array_equal(out, np.full((1, 4), 4.0, np.float32))
    # The same device buffer every time: a CUDA graph replays on the addresses it captured.
    assert fake.bound["x"] is x_buffer and x_buffer.writes == 3 and len(fake.buffers) == 2


def test_bench_labels_an_fp16_tvm_artifact_fp16_though_its_inputs_are_fp32():
    from types import SimpleNamespace

    from edgekiln.artifact.manifest import TensorSpec
    from edgekiln.bench.harness import precision_of

    inputs = (TensorSpec("x", "float32", (1, 8)),)
    fp16 = SimpleNamespace(quantization=None, backend_options={"precision": "fp16"}, inputs=inputs)
    fp32 = SimpleNamespace(quantization=None, backend_options={"precision": "fp32"}, inputs=inputs)
    assert (precision_of(fp16), precision_of(fp32)) == ("fp16", "fp32")

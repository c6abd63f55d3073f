"""TVM artifacts for CUDA profiles, built on this GPU-less machine: the model's kernels are
captured in one CUDA graph, and fp16 stores its weights in fp16 within the fp16 tolerance."""

from __future__ import annotations

import numpy as np
import pytest

from edgekiln.artifact import unpack
from edgekiln.compile.api import CompileOptions, compile_model
from edgekiln.compile.backends.tvm import gpu_pipeline
from edgekiln.compile.backends.tvm.backend import TVMOptions
from edgekiln.execute.host import gpu_present
from tests.conftest import nvcc_available
from tests.frameworks.models import onnx_tiny_cnn

needs_nvcc = pytest.mark.skipif(not nvcc_available(), reason="nvcc (CUDA toolkit) is not installed")


@pytest.fixture(scope="module")
def tiny_cnn(tmp_path_factory):
    return onnx_tiny_cnn(tmp_path_factory.mktemp("cnn") / "cnn.onnx")


def _relax(path):
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    return from_onnx(onnx.load(str(path)), shape_dict={"x": [1, 3, 32, 32]})


def _constants(mod):
    """The tensors of the constants in ``main`` (TVM 0.27 names Relax constants GenericConst)."""
    import tvm
    from tvm import relax

    found = []
    relax.analysis.post_order_visit(
        mod["main"], lambda e: found.append(e.value) if isinstance(e, tvm.ir.expr.GenericConst) else None
    )
    return found


@needs_nvcc
def test_tvm_cuda_artifact_runs_its_kernels_as_one_cuda_graph(compiled, tmp_path):
    root = tmp_path / "x"
    manifest = unpack(compiled("zoo:mobilenet_v3_small", "h200").path, root)
    assert manifest.backend_options["cuda_graph"] is True and manifest.backend_options["precision"] == "fp32"
    # The VM executable's bytecode calls the CUDA-graph builtins that the rewrite inserts.
    library = (root / "lib/model.so").read_bytes()
    assert all(name.encode() in library for name in gpu_pipeline.CUDA_GRAPH_BUILTINS)
    # ... which the CUDA runtime library the artifact bundles provides.
    cuda_runtime = (root / manifest.file("runtime-library-cuda").path).read_bytes()
    assert all(name.encode() in cuda_runtime for name in gpu_pipeline.CUDA_GRAPH_BUILTINS)


@needs_nvcc
def test_cuda_graph_off_leaves_the_builtins_out(tiny_cnn, tmp_path):
    options = CompileOptions(backend="tvm", backend_options=TVMOptions(cuda_graph=False))
    artifact = compile_model(tiny_cnn, "h100", tmp_path / "a.tar.gz", options=options)
    manifest = unpack(artifact.path, tmp_path / "x")
    assert manifest.backend_options["cuda_graph"] is False
    assert b"vm.builtin.cuda_graph" not in (tmp_path / "x/lib/model.so").read_bytes()


def test_the_cuda_pipeline_lifts_every_inner_kernel_into_the_graph(tiny_cnn):
    import tvm

    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90", "host": {"kind": "llvm"}})
    with tvm.transform.PassContext(config={gpu_pipeline.USE_CUDA_GRAPH: True}):
        lowered = gpu_pipeline.pipeline(target)(_relax(tiny_cnn))
    names = {gv.name_hint for gv in lowered.get_global_vars()}
    assert {"main_cuda_graph_capture", "cuda_graph_alloc"} <= names
    main = lowered["main"].script()
    assert main.count("vm.builtin.cuda_graph.run_or_capture") == 1


@needs_nvcc
def test_fp16_artifact_records_its_precision_and_tolerance(tiny_cnn, tmp_path):
    options = CompileOptions(backend="tvm", backend_options=TVMOptions(precision="fp16"))
    artifact = compile_model(tiny_cnn, "h200", tmp_path / "fp16.tar.gz", options=options)
    m = artifact.manifest
    assert m.backend_options["precision"] == "fp16"
    # The interface stays fp32: the caller and the reference see the fp32 model's tensors.
    assert [t.dtype for t in m.inputs] == ["float32"] and [t.dtype for t in m.outputs] == ["float32"]
    if gpu_present():
        assert m.validation.status == "passed" and m.validation.tolerance_abs > 1e-4
    else:
        assert m.validation.status == "skipped" and "no NVIDIA GPU" in m.validation.reason


def test_fp16_weights_are_fp16_and_stay_within_the_fp16_tolerance(tiny_cnn):
    """The fp16 graph built for this CPU against fp32 ONNX Runtime: the same transform a
    CUDA build applies, checked numerically where it can run."""
    import onnxruntime as ort
    import tvm
    from tvm import relax

    from edgekiln.compile import validate

    mod = gpu_pipeline.to_fp16(_relax(tiny_cnn))
    weights = [t for t in _constants(mod) if len(t.shape) >= 2]
    # Both convolutions' kernels, among the biases the frontend reshapes to (1, C, 1, 1).
    assert {(16, 3, 3, 3), (32, 16, 3, 3)} <= {tuple(t.shape) for t in weights}
    assert all(t.dtype == "float16" for t in weights)
    executable = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    session = ort.InferenceSession(str(tiny_cnn), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for _ in range(3):
        x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
        ref = session.run(None, {"x": x})[0]
        out = vm["main"](tvm.runtime.tensor(x)).numpy()
        assert out.dtype == np.float32
        diff = float(np.abs(out - ref).max())
        assert 0 < diff <= validate.FP16_RELATIVE_TOLERANCE * float(np.ptp(ref))

"""Models from PyTorch, TFLite, Keras/TensorFlow and MXNet compile and match the outputs of
the framework they came from: torch on the TorchScript module, the LiteRT interpreter on the
.tflite file, Keras on the Keras model, MXNet 1.9.1 (in its own venv) on the exported files.
"""

from __future__ import annotations

import json
import sys
import tarfile

import numpy as np
import onnxruntime  # noqa: F401 - an installed extra: missing must fail, not skip
import pytest

from edgekiln.artifact import unpack
from edgekiln.compile.api import CompileOptions, compile_model
from edgekiln.compile.frontends import parse_input_config
from edgekiln.compile.validate import ValidationOptions
from tests.conftest import host_has_vnni, run_artifact
from tests.frameworks import models

TOLERANCE = 1e-4
# Without VNNI ONNX Runtime's int8 kernels can saturate (host_has_vnni), and an int8 model's
# outputs drift further from TFLite's: 8 quantization steps on MobileNetV2 on a 2-core AMD
# EPYC, against 2 with VNNI.
VNNI = host_has_vnni()


def run(path, x: np.ndarray) -> np.ndarray:
    return run_artifact(path, [x])[0]


def close(got: np.ndarray, expected: np.ndarray, tolerance: float = TOLERANCE) -> float:
    assert got.shape == expected.shape and got.dtype == expected.dtype
    diff = float(np.abs(got.astype(np.float64) - expected.astype(np.float64)).max())
    assert diff <= tolerance, f"max abs diff {diff:g} > {tolerance:g}"
    assert got.reshape(len(got), -1).argmax(1).tolist() == expected.reshape(len(expected), -1).argmax(1).tolist()
    return diff


@pytest.fixture(scope="module")
def torchscript_resnet18(tmp_path_factory):
    import torch

    model = models.torch_resnet18(seed=3)
    x = np.random.default_rng(3).standard_normal((1, 3, 224, 224)).astype(np.float32)
    path = tmp_path_factory.mktemp("torch") / "resnet18.pt"
    torch.jit.trace(model, torch.from_numpy(x)).save(str(path))
    y = models.torch_outputs(model, x)
    assert np.ptp(y) > 1.0
    return {"path": path, "x": x, "y": y}


@pytest.fixture(scope="module")
def tflite_mobilenet_v2(tmp_path_factory):
    built = models.tf_models("mobilenet_v2", tmp_path_factory.mktemp("tflite"))
    # Outputs that vary, or a comparison of them proves nothing.
    assert np.ptp(built["y"]) > 1.0 and len(np.unique(built["yq"])) > 20
    return {"fp32": built["mobilenet_v2.tflite"], "int8": built["mobilenet_v2_int8.tflite"], **built}


@pytest.mark.parametrize("backend", ["tvm", "onnxruntime"])
def test_torchscript_resnet18_matches_torch(torchscript_resnet18, backend, tmp_path):
    artifact = compile_model(
        torchscript_resnet18["path"],
        "x86_64",
        tmp_path / "a.tar.gz",
        input_shape=parse_input_config('{"input0": [1, 3, 224, 224]}'),
        options=CompileOptions(backend=backend),
    )
    m = artifact.manifest
    assert m.model.source_format == "pytorch" and m.model.name == "resnet18"
    assert [(t.name, t.shape) for t in m.inputs] == [("input0", (1, 3, 224, 224))]
    assert m.validation.status == "passed"
    diff = close(run(artifact.path, torchscript_resnet18["x"]), torchscript_resnet18["y"])
    print(f"TorchScript resnet18 -> x86_64 {backend}: max abs diff vs torch {diff:.2e}")


def test_torch_export_program_takes_its_example_shapes(tmp_path):
    import torch

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 10),
    )
    models.randomize_torch_batchnorm(model, 1)
    model.eval()
    x = np.random.default_rng(1).standard_normal((1, 3, 48, 48)).astype(np.float32)
    torch.export.save(torch.export.export(model, (torch.from_numpy(x),)), str(tmp_path / "small.pt2"))
    artifact = compile_model(
        tmp_path / "small.pt2", "x86_64", tmp_path / "a.tar.gz", options=CompileOptions(backend="onnxruntime")
    )
    assert artifact.manifest.model.source_format == "pytorch"
    assert [t.shape for t in artifact.manifest.inputs] == [(1, 3, 48, 48)]
    close(run(artifact.path, x), models.torch_outputs(model, x))


@pytest.mark.parametrize("backend", ["tvm", "onnxruntime", "litert"])
def test_tflite_mobilenet_v2_matches_litert(tflite_mobilenet_v2, backend, tmp_path):
    artifact = compile_model(
        tflite_mobilenet_v2["fp32"], "x86_64", tmp_path / "a.tar.gz", options=CompileOptions(backend=backend)
    )
    m = artifact.manifest
    assert m.model.source_format == "tflite"
    assert "tensorflow" not in sys.modules  # TensorFlow ran in a child process
    # Neo kept a TFLite model's NHWC input; so does edgekiln when no shape says otherwise.
    assert [t.shape for t in m.inputs] == [(1, 224, 224, 3)]
    diff = close(run(artifact.path, tflite_mobilenet_v2["x"]), tflite_mobilenet_v2["y"])
    print(f"TFLite mobilenet_v2 -> x86_64 {backend}: max abs diff vs LiteRT {diff:.2e}")
    if backend == "litert":
        unpack(artifact.path, tmp_path / "unpacked")
        assert (tmp_path / "unpacked" / "model.tflite").read_bytes() == tflite_mobilenet_v2["fp32"].read_bytes()


@pytest.mark.parametrize("backend", ["tvm", "onnxruntime", "litert"])
def test_int8_tflite_compiles_for_every_backend(tflite_mobilenet_v2, backend, tmp_path):
    artifact = compile_model(
        tflite_mobilenet_v2["int8"], "x86_64", tmp_path / "a.tar.gz", options=CompileOptions(backend=backend)
    )
    m = artifact.manifest
    assert [t.dtype for t in m.inputs] == ["uint8"] and [t.dtype for t in m.outputs] == ["uint8"]
    got = run(artifact.path, tflite_mobilenet_v2["xq"])
    expected = tflite_mobilenet_v2["yq"]
    steps = int(np.abs(got.astype(int) - expected.astype(int)).max())
    print(f"int8 TFLite mobilenet_v2 -> x86_64 {backend}: max diff vs LiteRT {steps} quantization steps")
    if backend == "litert":
        assert np.array_equal(got, expected)  # the source .tflite itself
    else:
        # The QDQ graph rounds like TFLite's kernels except on exact ties between fused ops;
        # ONNX Runtime without VNNI adds its saturating products (above); TVM's code matched
        # TFLite exactly on the AMD host, so it keeps the tight bound everywhere.
        assert steps <= (2 if VNNI or backend == "tvm" else 12)
        assert got.argmax() == expected.argmax()


def test_auto_times_the_fast_backends_against_onnxruntime_on_the_tflite_source(tflite_mobilenet_v2, tmp_path):
    # The ONNX Runtime baseline is the imported source: the .tflite is converted once.
    artifact = compile_model(tflite_mobilenet_v2["fp32"], "x86_64", tmp_path / "a.tar.gz")
    selection = artifact.manifest.backend_selection.to_dict()
    assert selection["chosen"] == artifact.manifest.backend
    timed = [c for c in selection["candidates"] if "ratio_to_onnxruntime" in c]
    # TVM is timed too: the records shipped for the zoo's (PyTorch) MobileNetV2 cover this
    # Keras-born one, since both reach TVM as the same NHWC convolutions with the same shapes.
    assert {c["backend"] for c in timed} == {"openvino", "onnxruntime", "litert", "tvm"}, selection
    assert selection["tuning_coverage"] >= 0.9
    close(run(artifact.path, tflite_mobilenet_v2["x"]), tflite_mobilenet_v2["y"])


def test_tflite_given_nchw_shape_takes_nchw(tflite_mobilenet_v2, tmp_path):
    # Neo's Keras input shapes were NCHW: a shape given in NCHW makes the artifact take NCHW.
    nchw = tflite_mobilenet_v2["x"].transpose(0, 3, 1, 2).copy()
    for backend in ("onnxruntime", "litert"):
        artifact = compile_model(
            tflite_mobilenet_v2["fp32"],
            "x86_64",
            tmp_path / f"{backend}.tar.gz",
            input_shape=parse_input_config("[1, 3, 224, 224]"),
            options=CompileOptions(backend=backend),
        )
        assert [t.shape for t in artifact.manifest.inputs] == [(1, 3, 224, 224)]
        close(run(artifact.path, nchw), tflite_mobilenet_v2["y"])


def test_int8_source_refuses_quantize(tflite_mobilenet_v2, tmp_path):
    from edgekiln.compile.quantize import QuantizeOptions
    from edgekiln.errors import UserError

    np.save(tmp_path / "cal.npy", tflite_mobilenet_v2["xq"])
    with pytest.raises(UserError, match="already an int8 model"):
        compile_model(
            tflite_mobilenet_v2["int8"],
            "x86_64",
            tmp_path / "a.tar.gz",
            options=CompileOptions(
                backend="onnxruntime", quantize=QuantizeOptions(mode="int8", calibration=str(tmp_path / "cal.npy"))
            ),
        )
    assert not (tmp_path / "a.tar.gz").exists()


# --- Keras and TensorFlow --------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras_cnn(tmp_path_factory):
    root = tmp_path_factory.mktemp("keras")
    built = models.tf_models("small_cnn", root)
    return {"root": root, "x": built["x"], "y": built["y"]}


@pytest.mark.parametrize(
    ("file", "framework"), [("cnn.keras", "keras"), ("cnn.h5", "keras"), ("saved_model", "tensorflow")]
)
def test_keras_and_saved_model_match_keras(keras_cnn, file, framework, tmp_path):
    artifact = compile_model(
        keras_cnn["root"] / file, "x86_64", tmp_path / "a.tar.gz", options=CompileOptions(backend="onnxruntime")
    )
    assert artifact.manifest.model.source_format == framework
    assert [t.shape for t in artifact.manifest.inputs] == [(1, 32, 32, 3)]
    diff = close(run(artifact.path, keras_cnn["x"]), keras_cnn["y"])
    print(f"Keras {file} -> x86_64 onnxruntime: max abs diff vs Keras {diff:.2e}")


def test_keras_nchw_input_config_as_neo(keras_cnn, tmp_path):
    artifact = compile_model(
        keras_cnn["root"] / "cnn.keras",
        "x86_64",
        tmp_path / "a.tar.gz",
        input_shape=parse_input_config('{"image": [1, 3, 32, 32]}'),
        options=CompileOptions(backend="tvm"),
    )
    assert [(t.name, t.shape) for t in artifact.manifest.inputs] == [("image", (1, 3, 32, 32))]
    close(run(artifact.path, keras_cnn["x"].transpose(0, 3, 1, 2).copy()), keras_cnn["y"])


# --- rasp4b: the artifacts run on the emulated board ----------------------------------------

DEVICE_SCRIPT = """
import sys
import numpy as np
import edgekiln
model = edgekiln.load(sys.argv[1])
np.save(sys.argv[3], model.run({model.get_input_names()[0]: np.load(sys.argv[2])})[0])
"""


@pytest.mark.emulation
@pytest.mark.parametrize("source", ["torchscript_resnet18", "tflite_mobilenet_v2"])
def test_rasp4b_artifact_matches_the_source_framework_on_the_emulated_board(source, request, tmp_path):
    from edgekiln.emulation import ensure_sysroot
    from edgekiln.emulation import run as emulate

    ensure_sysroot("rasp4b")
    data = request.getfixturevalue(source)
    if source == "torchscript_resnet18":
        path, config, x, y = data["path"], "[[1, 3, 224, 224]]", data["x"], data["y"]
    else:
        path, config, x, y = data["fp32"], None, data["x"], data["y"]
    # One validation input: resnet18 takes some 20 s per input under qemu on 2 cores.
    artifact = compile_model(
        path,
        "rasp4b",
        tmp_path / "a.tar.gz",
        input_shape=parse_input_config(config),
        options=CompileOptions(backend="tvm", validation=ValidationOptions(samples=1)),
    )
    assert artifact.manifest.validation.status == "passed"
    assert artifact.manifest.validation.executed_on.startswith("emulated")
    np.save(tmp_path / "x.npy", x)
    proc = emulate(
        "rasp4b",
        ["python", "-c", DEVICE_SCRIPT, str(artifact.path), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        timeout=600,
        capture_output=True,
    )
    assert proc.returncode == 0, proc.stderr
    diff = close(np.load(tmp_path / "y.npy"), y)
    print(f"{source} -> rasp4b tvm on the emulated board: max abs diff vs source framework {diff:.2e}")


# --- MXNet: exported by MXNet 1.9.1, imported without it ------------------------------------


@pytest.mark.parametrize("name", ["mobilenetv2_1.0", "resnet18_v1"])
def test_gluon_model_zoo_export_matches_mxnet(name, tmp_path):
    from tests.frameworks.mxnet_reference import export_gluon, require_mxnet_python

    require_mxnet_python()
    ref = export_gluon(name, tmp_path / "export")
    artifact = compile_model(
        ref["symbol"],
        "x86_64",
        tmp_path / "a.tar.gz",
        input_shape=parse_input_config('{"data": [1, 3, 224, 224]}'),
        options=CompileOptions(backend="tvm"),
    )
    assert artifact.manifest.model.source_format == "mxnet" and artifact.manifest.model.name == name
    diff = close(run(artifact.path, ref["input"]), ref["output"])
    print(f"MXNet {name} -> x86_64 tvm: max abs diff vs MXNet 1.9.1 {diff:.2e}")


def test_neo_style_tarball_of_mxnet_files(tmp_path):
    from tests.frameworks.mxnet_reference import export_gluon, require_mxnet_python

    require_mxnet_python()
    ref = export_gluon("mobilenet0.25", tmp_path / "export")
    tarball = tmp_path / "model.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(ref["symbol"], arcname=ref["symbol"].name)
        tar.add(ref["params"], arcname=ref["params"].name)
    artifact = compile_model(
        tarball,
        "x86_64",
        tmp_path / "a.tar.gz",
        input_shape=parse_input_config(json.dumps({"data": [1, 3, 224, 224]})),
        options=CompileOptions(backend="onnxruntime"),
    )
    m = artifact.manifest
    assert m.model.source_format == "mxnet" and m.model.name == "mobilenet0.25"
    import hashlib

    assert m.model.source_sha256 == hashlib.sha256(tarball.read_bytes()).hexdigest()
    close(run(artifact.path, ref["input"]), ref["output"])

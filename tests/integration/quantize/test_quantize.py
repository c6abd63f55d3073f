"""int8 quantization with the accuracy gate, on a model trained here on real digits and on
the real ImageNet EfficientNet-Lite0 with scikit-image's photographs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from edgekiln.compile.api import CompileOptions, compile_model
from edgekiln.compile.quantize import QuantizeOptions
from edgekiln.errors import BackendError
from edgekiln.runtime.compat import host_info
from tests.conftest import host_has_vnni
from tests.integration.quantize.conftest import CAT_CLASSES, COFFEE_CLASSES

pytestmark = pytest.mark.skipif(host_info().arch != "x86_64", reason="runs x86-64 artifacts")

# Without VNNI ONNX Runtime's int8 kernels can saturate (host_has_vnni). The int8 references
# that validation and the accuracy gate run are then off: on an AVX2-only AMD EPYC a TVM int8
# artifact that agreed on every top-1 failed validation against them (max abs diff 0.667,
# tolerance 0.537). Expected to fail there, reported as such, until the gate and validation
# stop depending on those kernels.
SATURATES = pytest.mark.xfail(
    not host_has_vnni(),
    reason="ONNX Runtime's int8 kernels saturate on x86-64 CPUs without VNNI",
    strict=False,
)

PREDICT = """
import json, sys, edgekiln
model = edgekiln.load(sys.argv[1])
print(json.dumps({p: [t["index"] for t in model.predict(p, top_k=5)] for p in sys.argv[2:]}))
"""


def top5(artifact, *images) -> dict[str, list[int]]:
    proc = subprocess.run(
        [sys.executable, "-c", PREDICT, str(artifact), *map(str, images)], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout)


@pytest.mark.parametrize("backend", ["onnxruntime", pytest.param("tvm", marks=SATURATES)])
def test_digits_int8_passes_the_gate_with_true_accuracy(digits_model, tmp_path, backend):
    options = CompileOptions(
        backend=backend,
        quantize=QuantizeOptions(
            calibration=str(digits_model["calibration"]), validation=str(digits_model["validation"])
        ),
    )
    artifact = compile_model(digits_model["model"], "x86_64", tmp_path / "d.tar.gz", options=options)
    gate = artifact.manifest.quantization["accuracy_gate"]
    assert gate["labelled"] is True and gate["samples"] == 297 and gate["passed"] is True
    assert gate["fp32_top1"] > 0.9
    assert gate["int8_top1"] >= 0.99 * gate["fp32_top1"]
    assert artifact.manifest.quantization["calibration_samples"] == 100
    # The artifact is int8: QDQ nodes in the ONNX Runtime model.
    if backend == "onnxruntime":
        import onnx

        from edgekiln.artifact import unpack

        manifest = unpack(artifact.path, tmp_path / "x")
        ops = {n.op_type for n in onnx.load(str(tmp_path / "x" / manifest.file("model").path)).graph.node}
        assert "QuantizeLinear" in ops or "QLinearConv" in ops
    print(
        f"\n{backend} digits: fp32 top-1 {gate['fp32_top1']:.4f}, int8 top-1 {gate['int8_top1']:.4f}, "
        f"agreement {gate['top1_agreement']:.4f}"
    )


def test_gate_fails_with_one_blank_calibration_image(digits_model, tmp_path):
    blank = tmp_path / "blank.npz"
    np.savez(blank, x=np.zeros((1, 1, 8, 8), np.float32))
    options = CompileOptions(
        backend="onnxruntime",
        quantize=QuantizeOptions(calibration=str(blank), validation=str(digits_model["validation"])),
    )
    with pytest.raises(BackendError) as err:
        compile_model(digits_model["model"], "x86_64", tmp_path / "d.tar.gz", options=options)
    message = err.value.one_line()
    assert "int8 accuracy gate failed" in message and "most sensitive layers:" in message
    assert "n/a" not in message
    assert not (tmp_path / "d.tar.gz").exists()


# LiteRT quantizes by itself and has no int8-auto mode; on 9 held-out crops one
# disagreement is 11 %, so its gate is given that much room (the agreement is printed).
QUANT = {
    "onnxruntime": {"mode": "int8-auto"},
    "tvm": {"mode": "int8-auto"},
    "openvino": {"mode": "int8-auto"},
    "litert": {"mode": "int8", "accuracy_tolerance": 0.12},
}


@pytest.mark.parametrize(
    "backend", [pytest.param(b, marks=SATURATES) for b in ("onnxruntime", "tvm", "openvino")] + ["litert"]
)
def test_efficientnet_lite0_recognises_the_photographs(photos, calibration_folder, tmp_path, backend):
    fp32 = compile_model(
        "zoo:efficientnet_lite0", "x86_64", tmp_path / "fp32.tar.gz", options=CompileOptions(backend=backend)
    )
    int8 = compile_model(
        "zoo:efficientnet_lite0",
        "x86_64",
        tmp_path / "int8.tar.gz",
        options=CompileOptions(
            backend=backend, quantize=QuantizeOptions(calibration=str(calibration_folder), **QUANT[backend])
        ),
    )
    for artifact in (fp32, int8):
        result = top5(artifact.path, photos["chelsea"], photos["coffee"])
        assert CAT_CLASSES & set(result[str(photos["chelsea"])]), result
        assert COFFEE_CLASSES & set(result[str(photos["coffee"])]), result
    gate = int8.manifest.quantization["accuracy_gate"]
    assert gate["passed"] and gate["top1_agreement"] >= 1 - QUANT[backend].get("accuracy_tolerance", 0.01)
    # int8-auto: every attempt after the first kept two more layers in fp32.
    assert len(gate["fp32_layers"]) == 2 * (gate["attempts"] - 1)
    print(
        f"\n{backend} EfficientNet-Lite0 int8: agreement {gate['top1_agreement']:.3f} "
        f"on {gate['samples']} held-out crops, "
        f"{len(gate['fp32_layers'])} layers kept in fp32 after {gate['attempts']} attempts"
    )


def test_efficientnet_lite0_reference_is_the_trained_model(photos):
    """The graph built from the package's state dict predicts like ImageNet EfficientNet-Lite0."""
    from edgekiln.runtime.preprocess import preprocess
    from edgekiln.zoo import pretrained

    session = ort.InferenceSession(
        pretrained.build("efficientnet_lite0").SerializeToString(), providers=["CPUExecutionProvider"]
    )
    x = preprocess(photos["coffee"], pretrained.LITE0_PREPROCESSING, (1, 3, 224, 224))
    assert int(np.argmax(session.run(None, {"input": x})[0])) == 967  # espresso


def test_auto_times_the_fast_backends_on_a_pretrained_zoo_model(tmp_path):
    """--backend auto needs the source model as ONNX Runtime baseline; for zoo:efficientnet_lite0
    (real weights) it is built for the harness, so every candidate that may win gets timed
    (untuned TVM, with no tuning records for this model, is left out before building)."""
    artifact = compile_model("zoo:efficientnet_lite0", "x86_64", tmp_path / "auto.tar.gz")
    selection = artifact.manifest.backend_selection.to_dict()
    timed = {c["backend"] for c in selection["candidates"] if "ratio_to_onnxruntime" in c}
    assert timed == {"openvino", "onnxruntime", "litert"}, selection
    (tvm,) = [c for c in selection["candidates"] if c["backend"] == "tvm"]
    assert tvm["status"] == "skipped" and "untuned TVM is left out" in tvm["reason"], tvm
    assert artifact.manifest.backend == selection["chosen"]

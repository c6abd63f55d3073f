"""LiteRT backend: typed options, which profiles it serves, and the .tflite file it writes."""

from __future__ import annotations

import numpy as np
import pytest

from edgekiln.compile.backends import registry
from edgekiln.compile.backends.litert.backend import LiteRTBackend, LiteRTOptions
from edgekiln.device_profiles import get_profile
from edgekiln.errors import UserError


def test_registered_under_its_id():
    assert "litert" in registry.names()
    backend = registry.get("litert")
    assert isinstance(backend, LiteRTBackend) and backend.options_type is LiteRTOptions


def test_options_defaults_and_valid_values(tmp_path):
    assert LiteRTOptions.from_dict({}) == LiteRTOptions()
    opts = LiteRTOptions.from_dict(
        {
            "quantize": "int8",
            "calibration": tmp_path,
            "calibration_samples": 8,
            "calibration_method": "percentile",
            "num_threads": 2,
        }
    )
    assert opts.calibration == str(tmp_path) and opts.calibration_samples == 8 and opts.num_threads == 2


@pytest.mark.parametrize(
    "data,message",
    [
        ({"threads": 2}, r"unknown litert backend option\(s\) threads"),
        ({"quantize": "int4", "calibration": "x"}, "quantize must be one of 'int8' or absent"),
        ({"quantize": "int8"}, "int8 quantization needs calibration data"),
        ({"calibration": "imgs/"}, "calibration only applies with quantize='int8'"),
        ({"quantize": "int8", "calibration": 3}, "calibration must be text or absent"),
        ({"num_threads": 0}, "num_threads must be a positive integer"),
        ({"num_threads": True}, "num_threads must be an integer or absent"),
        ({"quantize": "int8", "calibration": "x", "calibration_samples": "10"}, "calibration_samples must be"),
        ({"quantize": "int8", "calibration": "x", "calibration_method": "kl"}, "calibration_method must be one of"),
    ],
)
def test_options_are_validated_on_load(data, message):
    with pytest.raises(UserError, match=message):
        LiteRTOptions.from_dict(data)


def test_supports_profiles_that_list_it():
    backend = LiteRTBackend()
    for name in ("x86_64", "ml_c5", "rasp4b", "rasp5", "rasp3b"):
        assert backend.supports(get_profile(name)) is None, name
    reason = backend.supports(get_profile("h200"))
    assert reason and "does not list the litert backend" in reason


def test_written_file_is_a_valid_tflite_flatbuffer():
    import tflite

    from edgekiln.compile.backends.litert.graph import Graph, Op
    from edgekiln.compile.backends.litert.writer import write

    g = Graph()
    g.inputs = [g.activation("x", (1, 8))]
    w = g.const("fc/weights", np.arange(24, dtype=np.float32).reshape(3, 8))
    b = g.const("fc/bias", np.ones(3, np.float32))
    y = g.activation("y", (1, 3))
    g.ops.append(Op("FULLY_CONNECTED", ["x", w, b], [y], {"activation": "RELU"}, "fc"))
    g.outputs, g.input_layouts, g.output_layouts = [y], ["same"], ["same"]
    content = write(g, ["features"], ["scores"], description="unit test")

    assert content[4:8] == b"TFL3"
    model = tflite.Model.GetRootAs(content, 0)
    assert model.Version() == 3 and model.Description() == b"unit test"
    assert model.Buffers(0).DataLength() == 0  # buffer 0 is the empty sentinel
    sub = model.Subgraphs(0)
    assert sub.OperatorsLength() == 1 and sub.TensorsLength() == 4
    code = model.OperatorCodes(sub.Operators(0).OpcodeIndex())
    assert code.BuiltinCode() == tflite.BuiltinOperator.FULLY_CONNECTED and code.Version() == 1
    for i in range(sub.TensorsLength()):
        tensor = sub.Tensors(i)
        buffer = model.Buffers(tensor.Buffer())
        if buffer.DataLength():
            # Weights start 16-byte aligned in the file, so kernels may read them in place.
            offset = buffer._tab.Vector(buffer._tab.Offset(4))
            assert offset % 16 == 0
            if tensor.Name() == b"fc/weights":
                assert np.array_equal(
                    np.frombuffer(buffer.DataAsNumpy().tobytes(), np.float32).reshape(3, 8),
                    np.arange(24, dtype=np.float32).reshape(3, 8),
                )
    sig = model.SignatureDefs(0)
    assert sig.SignatureKey() == b"serving_default"
    assert sig.Inputs(0).Name() == b"features" and sig.Outputs(0).Name() == b"scores"

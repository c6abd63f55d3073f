"""What backends declare about themselves, and the one option parser they share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import pytest

from edgekiln.compile.backends import registry
from edgekiln.compile.backends.base import BackendOptions
from edgekiln.compile.backends.litert.backend import LiteRTOptions
from edgekiln.compile.backends.onnxruntime.backend import ONNXRuntimeOptions
from edgekiln.compile.backends.openvino.backend import OpenVINOOptions
from edgekiln.compile.backends.tvm.backend import TVMOptions
from edgekiln.errors import UserError


def test_capabilities_are_class_attributes_the_driver_reads():
    caps = {
        name: (
            registry.get(name).quantization,
            registry.get(name).runs_on_emulated_board,
            registry.get(name).needs_calibration(),
        )
        for name in registry.names()
    }
    assert caps == {
        "litert": ("self", True, True),
        "onnxruntime": ("qdq", True, False),
        "openvino": ("qdq", False, False),  # the emulated aarch64 board carries no OpenVINO
        "tvm": ("qdq", True, False),
    }
    # int8-auto edits the QDQ graph, which a self-quantizing backend does not make.
    auto = [n for n in registry.names() if registry.get(n).can_quantize(auto=True)]
    assert auto == ["onnxruntime", "openvino", "tvm"]
    assert [n for n in registry.names() if registry.get(n).can_quantize(auto=False)] == ["litert", *auto]


def test_every_backend_options_type_uses_the_shared_base():
    for name in registry.names():
        options_type = registry.get(name).options_type
        assert issubclass(options_type, BackendOptions) and options_type.backend == name
        assert "from_dict" not in vars(options_type)  # no private copy of the parser
        assert options_type.from_dict({}) == options_type()


@pytest.mark.parametrize(
    "options_type,data,message",
    [
        (TVMOptions, {"ptx": True}, "unknown tvm backend option(s) ptx; valid options: embed_ptx, strip"),
        (
            TVMOptions,
            {"strip": "yes"},
            "tvm backend option strip must be true or false, got 'yes'; valid options: embed_ptx, strip",
        ),
        (
            ONNXRuntimeOptions,
            {"optimization": "max"},
            "onnxruntime backend option optimization must be one of 'basic', 'extended', 'all' or absent, got 'max'; "
            "valid options: optimization, intra_op_threads",
        ),
        (ONNXRuntimeOptions, {"intra_op_threads": 1.5}, "intra_op_threads must be an integer or absent, got 1.5"),
        (ONNXRuntimeOptions, {"intra_op_threads": 0}, "intra_op_threads must be a positive integer, got 0"),
        (
            LiteRTOptions,
            {"num_threads": "4"},
            "litert backend option num_threads must be an integer or absent, got '4'",
        ),
        (OpenVINOOptions, {"inference_threads": 0}, "inference_threads must be a positive integer, got 0"),
        (
            OpenVINOOptions,
            {"performance_hint": "fast"},
            "openvino backend option performance_hint must be one of 'latency', 'throughput', got 'fast'",
        ),
        (
            LiteRTOptions,
            {"a": 1, "b": 2},
            "unknown litert backend option(s) a, b; valid options: quantize, calibration, "
            "calibration_samples, calibration_method, num_threads",
        ),
    ],
)
def test_unknown_keys_and_wrong_types_name_the_valid_keys(options_type, data, message):
    with pytest.raises(UserError) as info:
        options_type.from_dict(data)
    assert str(info.value) == message or message in str(info.value)


def test_options_made_directly_are_checked_the_same_way():
    with pytest.raises(UserError, match="embed_ptx must be true or false, got 1"):
        TVMOptions(embed_ptx=1)  # type: ignore[arg-type]


def test_key_value_strings_are_read_as_each_field_type():
    assert TVMOptions.from_strings(["embed_ptx=false", "strip=true"]) == TVMOptions(embed_ptx=False, strip=True)
    assert ONNXRuntimeOptions.from_strings(["intra-op-threads=2", "optimization=basic"]) == ONNXRuntimeOptions(
        optimization="basic", intra_op_threads=2
    )
    assert LiteRTOptions.from_strings(["num_threads=none"]) == LiteRTOptions()
    assert OpenVINOOptions.from_strings(["inference-threads=2", "performance_hint=throughput"]) == OpenVINOOptions(
        inference_threads=2, performance_hint="throughput"
    )
    with pytest.raises(UserError, match="num_threads must be an integer or absent, got 'many'"):
        LiteRTOptions.from_strings(["num_threads=many"])
    with pytest.raises(UserError, match="'strip' is not KEY=VALUE; valid tvm options: embed_ptx, strip"):
        TVMOptions.from_strings(["strip"])
    with pytest.raises(UserError, match="unknown tvm backend option.*threads"):
        TVMOptions.from_strings(["threads=2"])


def test_a_new_backend_gets_the_parser_by_declaring_fields():
    @dataclass(frozen=True)
    class Options(BackendOptions):
        backend: ClassVar[str] = "toy"
        mode: Literal["a", "b"] = "a"
        scale: float = 1.0

    assert Options.from_dict({"mode": "b", "scale": 2}) == Options(mode="b", scale=2)
    with pytest.raises(UserError, match="toy backend option scale must be a number, got True"):
        Options.from_dict({"scale": True})


def test_registering_a_name_twice_is_a_bug():
    from edgekiln.errors import InternalError

    with pytest.raises(InternalError, match="registered twice"):
        registry.register(type(registry.get("tvm")))


def test_openvino_builds_for_x86_64_cpus_only_and_says_why_not():
    from edgekiln.device_profiles import get_profile

    backend = registry.get("openvino")
    assert backend.supports(get_profile("x86_64")) is None and backend.supports(get_profile("ml_c5")) is None
    assert "does not list the openvino backend" in backend.supports(get_profile("rasp4b"))
    assert "does not list the openvino backend" in backend.supports(get_profile("h200"))

"""The device runner's per-candidate measuring: timings and every failure as an error message."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from edgekiln.compile.backends.tvm.device_tuning import measure_candidate
from edgekiln.errors import BackendError
from edgekiln.execute.kernels import EvaluatorSettings, KernelArg, KernelTiming, check_args


@dataclass
class _ArgInfo:
    json: list

    def as_json(self):
        return self.json


@dataclass
class _RunnerInput:  # MetaSchedule's RunnerInput, as the runner reads it
    artifact_path: str
    args_info: list


def _input(tmp_path, kind="TENSOR"):
    library = tmp_path / "edgekiln-candidate-x" / "kernel.so"
    library.parent.mkdir()
    library.write_bytes(b"\x7fELF kernel")
    return _RunnerInput(str(library), [_ArgInfo([kind, "float32", [8, 4]]), _ArgInfo([kind, "int8", [2]])])


def test_costs_come_back_and_the_kernel_is_sent_as_built(tmp_path):
    seen = []

    def time_kernel(kernel, args, settings):
        seen.append((kernel, args, settings))
        return KernelTiming(costs=(0.002, 0.001), checksums=(1.0, 2.0))

    settings = EvaluatorSettings(number=5, repeat=2, min_repeat_ms=10)
    costs, error = measure_candidate(time_kernel, settings, _input(tmp_path))
    assert (costs, error) == ([0.002, 0.001], None)
    assert seen == [(b"\x7fELF kernel", [KernelArg("float32", (8, 4)), KernelArg("int8", (2,))], settings)]


@pytest.mark.parametrize(
    "failure, message",
    [
        (BackendError("agent TimeKernel: INVALID_ARGUMENT: the kernel failed: bad"), "the kernel failed: bad"),
        (RuntimeError("socket closed"), "RuntimeError: socket closed"),
    ],
)
def test_a_failure_is_the_candidates_error_message(tmp_path, failure, message):
    def time_kernel(kernel, args, settings):
        raise failure

    costs, error = measure_candidate(time_kernel, EvaluatorSettings(), _input(tmp_path))
    assert costs is None and message in error


def test_missing_library_and_non_tensor_arguments_are_errors(tmp_path):
    def time_kernel(kernel, args, settings):  # pragma: no cover - never reached
        raise AssertionError

    item = _input(tmp_path, kind="SHAPE")
    costs, error = measure_candidate(time_kernel, EvaluatorSettings(), item)
    assert costs is None and "cannot time a kernel with a SHAPE argument" in error
    item = _RunnerInput(str(tmp_path / "gone.so"), [])
    costs, error = measure_candidate(time_kernel, EvaluatorSettings(), item)
    assert costs is None and "gone.so" in error


def test_argument_bounds():
    from edgekiln.errors import UserError

    check_args([KernelArg("float32", (256, 256))] * 3)
    with pytest.raises(UserError, match="1..64 arguments"):
        check_args([])
    with pytest.raises(UserError, match="up to 8 sizes"):
        check_args([KernelArg("float32", (-1,))])
    with pytest.raises(UserError, match="evaluator min_repeat_ms"):
        EvaluatorSettings(min_repeat_ms=10**9).check()

"""MetaSchedule measuring on a device: a builder that links candidates for the profile's
CPU and a runner that has something else time them.

MetaSchedule's own remote path (RPCRunner) needs a TVM RPC server on the device and a
compiler there to link the tar files its builder makes. Here the builder links each
candidate into a shared library on the build host with the profile's cross compiler (as
the tvm backend links model libraries), and the runner hands the library to a "time this
kernel" callable: the edgekiln agent's TimeKernel call on a device (bound in the CLI), an
emulated board, or this host (:mod:`edgekiln.execute.kernels`). Every failure of one
candidate becomes that candidate's error message, never an exception in the tuner.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from edgekiln.compile.toolchain import find_tools
from edgekiln.device_profiles import DeviceProfile
from edgekiln.errors import EdgekilnError
from edgekiln.execute.kernels import EvaluatorSettings, KernelArg, KernelTiming

# (kernel library bytes, its arguments, evaluator settings) -> timing; raises on failure.
TimeKernel = Callable[[bytes, Sequence[KernelArg], EvaluatorSettings], KernelTiming]

_RUNNER_CLASS: list[Any] = []


def export_shared_library(compiler: str | None, flags: Sequence[str], module: Any) -> str:
    """MetaSchedule's export step: ``module`` linked into a .so for the device (with the
    profile's cross compiler; None: the host's); returns its path, in a directory of its own."""
    from tvm.support import cc as tvm_cc

    path = os.path.join(tempfile.mkdtemp(prefix="edgekiln-candidate-"), "kernel.so")
    fcompile = tvm_cc.cross_compiler(compiler, options=list(flags)) if compiler else None
    module.export_library(path, fcompile=fcompile)
    return path


def device_builder(profile: DeviceProfile, max_workers: int | None = None, timeout_s: float = 300.0) -> Any:
    """A MetaSchedule LocalBuilder whose candidates are shared libraries for ``profile``."""
    from tvm.s_tir.meta_schedule.builder import LocalBuilder

    from edgekiln.compile.backends.tvm.tuner import build_candidate

    compiler = find_tools(profile)[0] if profile.toolchain.cc else None
    # A partial of a module-level function: the builder's worker processes unpickle it.
    export = functools.partial(export_shared_library, compiler, ())
    # MetaSchedule's 30 s default counts the worker's start (importing the compiler), which a
    # loaded small host can take alone; a cross link is slower than the host's too.
    return LocalBuilder(f_build=build_candidate, f_export=export, max_workers=max_workers, timeout_sec=timeout_s)


def _runner_class() -> Any:
    # Defined on first use: MetaSchedule's base classes import the TVM compiler.
    if _RUNNER_CLASS:
        return _RUNNER_CLASS[0]
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.runner import LocalRunnerFuture, PyRunner

    @derived_object
    class DeviceRunner(PyRunner):
        """Times each candidate with ``time_kernel``, one after another (the device is one)."""

        def __init__(self, time_kernel: TimeKernel, settings: EvaluatorSettings) -> None:
            super().__init__()
            self.time_kernel = time_kernel
            self.settings = settings

        def run(self, runner_inputs: list[Any]) -> list[Any]:
            futures = []
            for item in runner_inputs:
                costs, error = measure_candidate(self.time_kernel, self.settings, item)
                futures.append(LocalRunnerFuture(res=costs, error_message=error))
            return futures

    _RUNNER_CLASS.append(DeviceRunner)
    return DeviceRunner


def device_runner(time_kernel: TimeKernel, settings: EvaluatorSettings | None = None) -> Any:
    """A MetaSchedule Runner that times candidates with ``time_kernel``."""
    return _runner_class()(time_kernel, settings or EvaluatorSettings())


def kernel_args(args_info: Sequence[Any]) -> list[KernelArg]:
    """MetaSchedule's ArgInfo list as kernel arguments (only tensors are tunable arguments)."""
    out = []
    for info in args_info:
        kind, dtype, shape = info.as_json()
        if kind != "TENSOR":
            raise EdgekilnError(f"cannot time a kernel with a {kind} argument")
        out.append(KernelArg(dtype=str(dtype), shape=tuple(int(d) for d in shape)))
    return out


def measure_candidate(
    time_kernel: TimeKernel, settings: EvaluatorSettings, item: Any
) -> tuple[list[float] | None, str | None]:
    """(costs, None) or (None, error message) for one RunnerInput. The built library stays:
    MetaSchedule's default measure callbacks delete its directory once the result is in."""
    path = Path(str(item.artifact_path))
    try:
        timing = time_kernel(path.read_bytes(), kernel_args(item.args_info), settings)
        return [float(c) for c in timing.costs], None
    except EdgekilnError as exc:
        return None, exc.one_line()
    except Exception as exc:  # noqa: BLE001 - one candidate's failure must not stop the tuner
        return None, f"{type(exc).__name__}: {exc}"

"""Time one compiled kernel (a MetaSchedule candidate) on this machine, in a process of its own.

A tuner builds each candidate kernel as a shared library for the device, and something on
the device has to load it and time it: the agent's TimeKernel call (the device itself), or
an emulated board (plumbing only: emulated time says nothing about the board). Both run
``python -m edgekiln.execute.kernels`` with one JSON request on stdin and read one JSON
answer from stdout, so that a kernel that crashes takes only that process.

The request names the kernel library, the TVM runtime library to load first (the device
needs no TVM install; the kernel calls into the runtime for threads and workspace), the
arguments (dtype and shape of each tensor) and the evaluator settings that MetaSchedule's
own runners use (``number``, ``repeat``, ``min_repeat_ms``). The kernel's arguments are
seeded random tensors; the answer has one cost in seconds per repeat and, to check that
the kernel computed something right, the sum of every argument after one call.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Sequence

from edgekiln.errors import BackendError, UserError

KERNEL_MODULE = "edgekiln.execute.kernels"
# A single candidate that runs longer than this is no use to a tuner; the process is killed.
DEFAULT_TIMEOUT_S = 120.0
# Bounds on what a request may ask for, checked before anything is loaded or allocated.
MAX_ARGS = 64
MAX_ARG_BYTES = 256 * 1024 * 1024
MAX_NUMBER, MAX_REPEAT, MAX_MIN_REPEAT_MS = 10_000, 100, 60_000
_DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64")
_RUNTIME_PROBE = "runtime.RPCTimeEvaluator"


@dataclass(frozen=True)
class KernelArg:
    """One tensor argument of a kernel."""

    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class EvaluatorSettings:
    """MetaSchedule's EvaluatorConfig: ``repeat`` costs, each the mean of ``number`` calls,
    with ``number`` raised until one repeat takes at least ``min_repeat_ms``."""

    number: int = 3
    repeat: int = 1
    min_repeat_ms: int = 100

    def check(self) -> None:
        for name, value, top in (
            ("number", self.number, MAX_NUMBER),
            ("repeat", self.repeat, MAX_REPEAT),
            ("min_repeat_ms", self.min_repeat_ms, MAX_MIN_REPEAT_MS),
        ):
            low = 0 if name == "min_repeat_ms" else 1
            if not isinstance(value, int) or not low <= value <= top:
                raise UserError(f"evaluator {name} must be an integer in {low}..{top}, not {value!r}")


@dataclass(frozen=True)
class KernelTiming:
    """Costs in seconds (one per repeat) and each argument's sum after one call."""

    costs: tuple[float, ...]
    checksums: tuple[float, ...]


def check_args(args: Sequence[KernelArg]) -> None:
    """Refuse argument lists out of bounds before any memory is allocated."""
    import numpy as np

    if not 1 <= len(args) <= MAX_ARGS:
        raise UserError(f"a kernel takes 1..{MAX_ARGS} arguments, not {len(args)}")
    total = 0
    for arg in args:
        if arg.dtype not in _DTYPES:
            raise UserError(f"kernel argument dtype {arg.dtype!r} is not one of {', '.join(_DTYPES)}")
        if not all(isinstance(d, int) and d >= 0 for d in arg.shape) or len(arg.shape) > 8:
            raise UserError(f"kernel argument shape {list(arg.shape)} is not up to 8 sizes >= 0")
        total += int(np.prod(arg.shape, dtype=np.int64)) * np.dtype(arg.dtype).itemsize
    if total > MAX_ARG_BYTES:
        raise UserError(f"the kernel's arguments take {total} bytes, over the {MAX_ARG_BYTES}-byte limit")


def time_kernel_here(
    library: str, runtime_library: str | None, args: Sequence[KernelArg], settings: EvaluatorSettings, seed: int = 0
) -> KernelTiming:
    """Load ``library`` in this process and time its entry function (see the module doc)."""
    import numpy as np
    import tvm_ffi

    from edgekiln.artifact.manifest import TensorSpec
    from edgekiln.execute.inputs import random_tensor

    settings.check()
    check_args(args)
    if runtime_library and tvm_ffi.get_global_func(_RUNTIME_PROBE, allow_missing=True) is None:
        ctypes.CDLL(runtime_library, mode=ctypes.RTLD_GLOBAL)
    if tvm_ffi.get_global_func(_RUNTIME_PROBE, allow_missing=True) is None:
        raise BackendError("no TVM runtime library is loaded: the kernel cannot be timed")
    module = tvm_ffi.load_module(library)
    cpu = tvm_ffi.device("cpu", 0)
    alloc = tvm_ffi.get_global_func("runtime.TVMTensorAllocWithScope")
    copy = tvm_ffi.get_global_func("runtime.TVMTensorCopyFromTo")
    rng = np.random.default_rng(seed)
    tensors = []
    for i, arg in enumerate(args):
        host = random_tensor(TensorSpec(name=f"arg{i}", dtype=arg.dtype, shape=tuple(arg.shape)), rng)
        # Runtime-allocated (64-byte aligned) buffers, as TVM's own runners give kernels.
        tensor = alloc(tvm_ffi.Shape(arg.shape), tvm_ffi.dtype(arg.dtype), cpu, "global")
        copy(tvm_ffi.from_dlpack(np.ascontiguousarray(host)), tensor)
        tensors.append(tensor)
    entry = module.entry_name
    module[entry](*tensors)  # one call first: the checksums, and a kernel that fails does so here
    checksums = tuple(float(np.from_dlpack(t).astype(np.float64).sum()) for t in tensors)
    evaluator = tvm_ffi.get_global_func(_RUNTIME_PROBE)(
        module, entry, 1, 0, settings.number, settings.repeat, settings.min_repeat_ms, 100, 0, 1, 0, ""
    )
    blob = evaluator(*tensors)
    costs = tuple(float(c) for c in np.frombuffer(bytes(blob), dtype=np.float64, count=settings.repeat))
    return KernelTiming(costs=costs, checksums=checksums)


def request_json(
    library: str, runtime_library: str | None, args: Sequence[KernelArg], settings: EvaluatorSettings, seed: int = 0
) -> str:
    """The JSON request that :func:`main` reads."""
    return json.dumps(
        {
            "library": library,
            "runtime_library": runtime_library,
            "args": [[a.dtype, list(a.shape)] for a in args],
            "number": settings.number,
            "repeat": settings.repeat,
            "min_repeat_ms": settings.min_repeat_ms,
            "seed": seed,
        }
    )


def run_timer(
    prefix: Sequence[str], env: dict[str, str] | None, request: str, timeout: float = DEFAULT_TIMEOUT_S
) -> KernelTiming:
    """Run the timer process (``prefix`` runs a Python: this one, or an emulated board's) on
    ``request``; a crash, a timeout or an error it reports becomes a BackendError."""
    try:
        proc = subprocess.run(
            [*prefix, "-m", KERNEL_MODULE], input=request, capture_output=True, text=True, env=env, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise BackendError(f"the kernel did not finish within {timeout:g} s; its process was killed") from None
    answer = None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            answer = json.loads(line)
            break
    if answer is None:
        tail = " ".join(proc.stderr.strip().splitlines()[-2:])[-300:]
        raise BackendError(f"the kernel's process died (exit {proc.returncode}) {tail}".strip())
    if "error" in answer:
        raise BackendError(str(answer["error"]))
    return KernelTiming(costs=tuple(answer["costs"]), checksums=tuple(answer["checksums"]))


def process_timer(
    prefix: Sequence[str], env: dict[str, str] | None, runtime_library: str | None, timeout: float = DEFAULT_TIMEOUT_S
) -> Any:
    """A "time this kernel" callable, ``(kernel bytes, args, settings) -> KernelTiming``, that
    runs the timer process with ``prefix`` (a Python) on a private copy of each kernel."""
    import shutil
    import tempfile

    def time_kernel(kernel: bytes, args: Sequence[KernelArg], settings: EvaluatorSettings) -> KernelTiming:
        work = tempfile.mkdtemp(prefix="edgekiln-kernel-")
        try:
            library = f"{work}/kernel.so"
            with open(library, "wb") as f:
                f.write(kernel)
            return run_timer(prefix, env, request_json(library, runtime_library, args, settings), timeout)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    return time_kernel


def local_timer(runtime_library: str | None, timeout: float = DEFAULT_TIMEOUT_S) -> Any:
    """Kernels timed in a process of this Python on this host (real timings)."""
    from edgekiln.execute.runners import worker_env

    return process_timer([sys.executable], worker_env(), runtime_library, timeout)


def emulated_timer(profile: Any, runtime_library: str, timeout: float = 600.0) -> Any:
    """Kernels run on ``profile``'s emulated board: plumbing and correctness only, since
    emulated time measures qemu, not the board."""
    from edgekiln.emulation import python_prefix

    prefix, env = python_prefix(profile)
    return process_timer(prefix, env, runtime_library, timeout)


def _parse(request: dict[str, Any]) -> tuple[list[KernelArg], EvaluatorSettings]:
    args = [KernelArg(dtype=str(dtype), shape=tuple(shape)) for dtype, shape in request["args"]]
    settings = EvaluatorSettings(
        number=request.get("number", 3),
        repeat=request.get("repeat", 1),
        min_repeat_ms=request.get("min_repeat_ms", 100),
    )
    return args, settings


def main() -> int:
    """Read one request from stdin, answer one JSON line on stdout (``costs`` or ``error``)."""
    try:
        request = json.loads(sys.stdin.read())
        args, settings = _parse(request)
        timing = time_kernel_here(
            request["library"], request.get("runtime_library"), args, settings, int(request.get("seed", 0))
        )
        answer: dict[str, Any] = {"costs": list(timing.costs), "checksums": list(timing.checksums)}
    except Exception as exc:  # noqa: BLE001 - every failure is an answer to the caller
        message = exc.one_line() if hasattr(exc, "one_line") else f"{type(exc).__name__}: {exc}"
        answer = {"error": " ".join(str(message).split())[:500]}
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

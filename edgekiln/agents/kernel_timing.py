"""The agent's TimeKernel call: time a kernel a tuner built for this device.

Loading a shared library that arrived over the socket is running the caller's code, so the
call is refused unless the agent's config turns it on (``[tuning] enabled = true``); sizes
are bounded before anything is written; the libraries go to a private temporary directory
(mode 0700) that is deleted when the call ends; and they are loaded in a process of its own
(:mod:`edgekiln.execute.kernels`), never in the agent, so a kernel that crashes or hangs
takes only that process.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from edgekiln.errors import BackendError, UserError

log = logging.getLogger(__name__)

_ELF_MAGIC = b"\x7fELF"


class KernelRefusal(Exception):
    """TimeKernel's answer when it is not OK: a grpc status code name and a one-line message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def time_kernel(request: Any, tuning: Any, timer: Any = None) -> tuple[list[float], list[float]]:
    """Check ``request`` (a TimeKernelRequest) against ``tuning`` (the agent's TuningConfig),
    time it and return (costs, checksums); raises KernelRefusal for every other answer.

    ``timer(request_json, timeout)`` runs the timer process (default: this Python's).
    """
    from edgekiln.execute import kernels

    if not tuning.enabled:
        raise KernelRefusal(
            "FAILED_PRECONDITION",
            "tuning is not enabled on this agent: set [tuning] enabled = true in its config "
            "(it runs the kernels a tuner sends)",
        )
    size = len(request.kernel) + len(request.runtime_library)
    if size > tuning.max_library_bytes:
        raise KernelRefusal(
            "RESOURCE_EXHAUSTED",
            f"the kernel and runtime library take {size} bytes, over tuning.max_library_bytes "
            f"({tuning.max_library_bytes})",
        )
    for what, data in (("kernel", request.kernel), ("runtime library", request.runtime_library)):
        if not data.startswith(_ELF_MAGIC):
            raise KernelRefusal("INVALID_ARGUMENT", f"the {what} is not a shared library (no ELF header)")
    args = [kernels.KernelArg(dtype=a.dtype, shape=tuple(int(d) for d in a.shape)) for a in request.arguments]
    settings = kernels.EvaluatorSettings(
        number=request.number or 3, repeat=request.repeat or 1, min_repeat_ms=request.min_repeat_ms
    )
    try:
        settings.check()
        kernels.check_args(args)
    except UserError as exc:
        raise KernelRefusal("INVALID_ARGUMENT", exc.one_line()) from None
    work = Path(tempfile.mkdtemp(prefix="edgekiln-kernel-"))  # 0700: this user's alone
    try:
        (work / "kernel.so").write_bytes(request.kernel)
        (work / "libtvm_runtime.so").write_bytes(request.runtime_library)
        body = kernels.request_json(
            str(work / "kernel.so"), str(work / "libtvm_runtime.so"), args, settings, request.seed
        )
        run = timer or _local_timer
        try:
            timing = run(body, tuning.timeout_seconds)
        except BackendError as exc:
            message = exc.one_line()
            if "did not finish" in message:
                raise KernelRefusal("DEADLINE_EXCEEDED", message) from None
            if "process died" in message:
                raise KernelRefusal("INTERNAL", message) from None
            raise KernelRefusal("INVALID_ARGUMENT", f"the kernel failed: {message}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("time-kernel: %d argument(s), best %.6f s", len(args), min(timing.costs))
    return list(timing.costs), list(timing.checksums)


def _local_timer(body: str, timeout: float) -> Any:
    from edgekiln.execute.kernels import run_timer
    from edgekiln.execute.runners import worker_env

    return run_timer([sys.executable], worker_env(), body, timeout)

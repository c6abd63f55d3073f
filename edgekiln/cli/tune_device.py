"""``edgekiln tune --device AGENT``: MetaSchedule's candidates timed on a device by its agent.

The TVM-specific runner (:mod:`edgekiln.compile.backends.tvm.device_tuning`) takes a "time
this kernel" callable; this module binds it to the agent's TimeKernel call, with the TVM
runtime library that artifacts for the profile bundle (the device needs no TVM install).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from edgekiln.errors import BackendError, UserError


def socket_path(address: str) -> str:
    """An agent address (a socket path or a ``unix:`` URI) as a socket path."""
    return address[len("unix:") :] if address.startswith("unix:") else address


def agent_time_kernel(address: str, runtime_library: Path, timeout: float = 300.0) -> Any:
    """A TimeKernel callable for the runner: each kernel goes to the agent at ``address``;
    every failure is a BackendError, which the runner turns into the candidate's error."""
    from edgekiln.agents.client import AgentCallError, AgentClient
    from edgekiln.execute.kernels import EvaluatorSettings, KernelArg, KernelTiming

    runtime = runtime_library.read_bytes()
    client = AgentClient(socket_path(address), timeout=timeout)

    def time_kernel(kernel: bytes, args: Sequence[KernelArg], settings: EvaluatorSettings) -> KernelTiming:
        try:
            costs, checksums = client.time_kernel(
                kernel,
                runtime,
                [(a.dtype, a.shape) for a in args],
                number=settings.number,
                repeat=settings.repeat,
                min_repeat_ms=settings.min_repeat_ms,
                timeout=timeout,
            )
        except AgentCallError as exc:
            raise BackendError(f"agent TimeKernel: {exc.code}: {exc.details}") from None
        return KernelTiming(costs=tuple(costs), checksums=tuple(checksums))

    time_kernel.close = client.close  # type: ignore[attr-defined]
    return time_kernel


def check_agent(address: str, timeout: float = 10.0) -> None:
    """Refuse at once, with one line, an agent that cannot time any kernel (none answers,
    tuning is off, an older agent), rather than failing every trial of a tuning run: a
    request without a kernel is answered INVALID_ARGUMENT by an agent that could."""
    from edgekiln.agents.client import AgentCallError, AgentClient

    with AgentClient(socket_path(address), timeout=timeout) as client:
        try:
            client.time_kernel(b"", b"", [])
        except AgentCallError as exc:
            if exc.code == "INVALID_ARGUMENT":
                return
            hint = "update edgekiln on the device" if exc.code == "UNIMPLEMENTED" else None
            raise UserError(f"the agent on {address} cannot time kernels: {exc.details}", hint=hint) from None


def device_runner_for(address: str, profile: Any, settings: Any = None) -> Any:
    """The MetaSchedule Runner for ``edgekiln tune --device``: candidates for ``profile``
    timed by the agent at ``address``. Needs the profile's TVM runtime library on this host
    (``edgekiln fetch-runtime ARCH`` for another CPU)."""
    from edgekiln.compile.backends.tvm import runtime_libs
    from edgekiln.compile.backends.tvm.device_tuning import device_runner

    check_agent(address)
    libs = runtime_libs.find(profile.cpu.arch)
    if libs is None:
        reason = runtime_libs.unavailable_reason(profile.cpu.arch)
        raise UserError(
            reason or f"no TVM runtime library for {profile.cpu.arch} on this host",
            hint=None if reason else f"run `edgekiln fetch-runtime {profile.cpu.arch}` once",
        )
    return device_runner(agent_time_kernel(address, libs.runtime), settings)

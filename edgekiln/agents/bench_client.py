"""The benchmark harness's client for the agent's Bench call.

``connect(address, label)`` opens one Bench stream to the agent at ``address`` and returns a
line channel (``send``, ``receive``, ``close``) that :class:`edgekiln.execute.runners.AgentRunner`
drives with the worker protocol of :mod:`edgekiln.execute.worker`; the agent relays each line to
a worker process of its own on the device.  The artifact paths in those lines are read by the
agent's worker on the device: an artifact must be there first (copied next to the agent, as
LoadModel's url is), and relative paths are taken from the agent's model directory.
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass
from typing import Any

from edgekiln.errors import BackendError, DependencyError

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_END = object()


@dataclass(frozen=True)
class BenchExit:
    """How the device's worker ended, in the fields of the harness's ``ExitInfo``: the agent
    reports the kernel's ru_maxrss of its child; the worker's own VmHWM comes in its reply to
    ``exit``, so ``peak_rss_kb`` is left to that."""

    peak_rss_kb: int | None = None
    ru_maxrss_kb: int | None = None
    exit_code: int | None = None


def target(address: str) -> str:
    """The gRPC target for an agent address: a Unix socket path, or a ``unix:`` URI."""
    return address if address.startswith("unix:") else f"unix:{address}"


class BenchChannel:
    """Lines to and from a benchmark worker on a device, over one Bench stream."""

    def __init__(self, address: str, label: str, connect_timeout: float = 10.0) -> None:
        try:
            import grpc
        except ImportError:
            raise DependencyError("the agent's client needs grpcio", hint="pip install 'edgekiln[agent]'") from None
        from edgekiln.agents import agent_pb2 as pb
        from edgekiln.agents import agent_pb2_grpc as pb_grpc

        self._grpc = grpc
        self._pb = pb
        self._label = label
        self._address = address
        self._outgoing: queue.Queue[Any] = queue.Queue()
        self._closed = False
        self._channel = grpc.insecure_channel(
            target(address),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        try:
            grpc.channel_ready_future(self._channel).result(timeout=connect_timeout)
        except grpc.FutureTimeoutError:
            self._channel.close()
            raise BackendError(f"{label}: no agent answered on {address} within {connect_timeout:g} s") from None
        self._call = pb_grpc.AgentStub(self._channel).Bench(self._requests())

    def _requests(self) -> Any:
        while True:
            item = self._outgoing.get()
            if item is _END:
                return
            yield item

    def _failed(self, exc: Any) -> BackendError:
        code = exc.code().name if exc.code() else "UNKNOWN"
        if code == "UNIMPLEMENTED":
            return BackendError(
                f"{self._label}: the agent on {self._address} has no Bench call (an older agent): "
                "update edgekiln on the device"
            )
        return BackendError(f"{self._label}: agent Bench call: {code}: {exc.details() or ''}")

    def send(self, line: str) -> None:
        if self._closed:
            raise BackendError(f"{self._label}: the Bench stream is closed")
        self._outgoing.put(self._pb.BenchLine(json=line.rstrip("\n")))

    def receive(self) -> str:
        try:
            return next(self._call).json + "\n"
        except StopIteration:
            raise BackendError(f"{self._label}: the worker on the device ended (exit {self._exit_code()})") from None
        except self._grpc.RpcError as exc:
            raise self._failed(exc) from None

    def _trailer(self, key: str) -> int | None:
        try:
            value = dict(self._call.trailing_metadata() or ()).get(key)
            return int(value) if value is not None else None
        except (ValueError, self._grpc.RpcError):
            return None

    def _exit_code(self) -> int | None:
        return self._trailer("exit-code")

    def close(self, timeout: float = 30.0) -> BenchExit:
        """End the input (the worker exits at its end), wait for the stream's end, and
        return what the agent reported; a worker that does not end in time is cancelled."""
        if not self._closed:
            self._closed = True
            self._outgoing.put(_END)
        try:
            # The agent ends the stream when the worker exits.
            done = self._call.done
            deadline = time.monotonic() + timeout
            while not done() and time.monotonic() < deadline:
                time.sleep(0.01)
            if not done():
                self._call.cancel()  # the agent kills the worker when the call goes
            return BenchExit(ru_maxrss_kb=self._trailer("ru-maxrss-kb"), exit_code=self._exit_code())
        finally:
            self._channel.close()


def connect(address: str, label: str) -> BenchChannel:
    """Open a Bench stream to the agent at ``address`` (socket path or ``unix:`` URI)."""
    return BenchChannel(address, label)

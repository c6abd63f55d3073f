"""The agent's local API: the gRPC servicer over a model registry and a capture service.

Methods, messages and status codes are the SageMaker Edge Manager agent's (see
``agent.proto``).  Every answer carries a defined status code: a method raises
:class:`Refusal` with the code to answer, and an unexpected exception becomes INTERNAL
(logged), never gRPC's UNKNOWN.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any, Callable

from edgekiln.agents.registry import LoadedModel, ModelLoadError, ModelRegistry
from edgekiln.errors import UserError

log = logging.getLogger(__name__)


class Refusal(Exception):
    """Answer the current call with status ``code`` (a grpc.StatusCode name) and ``message``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = " ".join(message.split())


def abort(context: Any, code: str, message: str) -> None:
    """End the call with ``code``; raises (grpc's abort does not return)."""
    import grpc

    context.abort(getattr(grpc.StatusCode, code), " ".join(message.split()))


def _answers(method: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a Refusal into its status and any other exception into INTERNAL."""

    @functools.wraps(method)
    def call(self: AgentServicer, request: Any, context: Any) -> Any:
        try:
            return method(self, request, context)
        except Refusal as refusal:
            abort(context, refusal.code, refusal.message)
        except Exception as exc:  # noqa: BLE001 - the agent answers and lives on
            log.exception("%s failed", method.__name__)
            abort(context, "INTERNAL", f"{method.__name__} failed: {type(exc).__name__}: {exc}")

    return call


def _model_message(entry: LoadedModel) -> Any:
    from edgekiln.agents import agent_pb2 as pb
    from edgekiln.agents.tensors import metadata

    manifest = entry.model.manifest
    return pb.Model(
        url=entry.url,
        name=entry.name,
        input_tensor_metadatas=[metadata(t.name, t.dtype, t.shape) for t in manifest.inputs],
        output_tensor_metadatas=[metadata(t.name, t.dtype, t.shape) for t in manifest.outputs],
    )


def _input_arrays(entry: LoadedModel, request: Any) -> list[Any]:
    """The request's tensors as arrays in the model's input order (by name when all are named)."""
    from edgekiln.agents.tensors import TensorError, from_proto

    specs = entry.model.manifest.inputs
    if len(request.tensors) != len(specs):
        raise Refusal(
            "INVALID_ARGUMENT", f"model {entry.name} takes {len(specs)} input tensor(s), got {len(request.tensors)}"
        )
    by_name = {t.tensor_metadata.name: t for t in request.tensors if t.tensor_metadata.name}
    try:
        if len(by_name) == len(specs):
            missing = [s.name for s in specs if s.name not in by_name]
            if missing:
                raise TensorError(
                    f"model {entry.name} has no input named "
                    f"{sorted(set(by_name) - {s.name for s in specs})}; "
                    f"its inputs are {[s.name for s in specs]}"
                )
            tensors = [by_name[s.name] for s in specs]
        else:
            tensors = list(request.tensors)
        return [from_proto(t, name=s.name, dtype=s.dtype, shape=s.shape) for t, s in zip(tensors, specs)]
    except NotImplementedError as exc:
        raise Refusal("UNIMPLEMENTED", str(exc)) from None
    except TensorError as exc:
        raise Refusal("INVALID_ARGUMENT", exc.message) from None


class AgentServicer:
    """The Agent service (``agent.proto``) over ``registry`` and a CaptureService."""

    def __init__(self, registry: ModelRegistry, capture: Any, tuning: Any = None) -> None:
        from edgekiln.agents.config import TuningConfig

        self.registry = registry
        self.capture = capture
        self.tuning = tuning or TuningConfig()  # off unless the config turns it on
        # One benchmark (or timed kernel) at a time, so that it has the device to itself.
        self._bench_slot = threading.Lock()

    def _loaded(self, name: str) -> LoadedModel:
        entry = self.registry.get(name)
        if entry is None:
            raise Refusal("NOT_FOUND", f"no model named {name[:80]!r} is loaded")
        return entry

    # -- model management ------------------------------------------------------------
    @_answers
    def LoadModel(self, request: Any, context: Any) -> Any:
        from edgekiln.agents import agent_pb2 as pb

        try:
            entry = self.registry.load(request.name, request.url)
        except ModelLoadError as exc:
            raise Refusal(exc.code, exc.message) from None
        log.info("loaded model %s from %s", entry.name, entry.url)
        return pb.LoadModelResponse(model=_model_message(entry))

    @_answers
    def UnLoadModel(self, request: Any, context: Any) -> Any:
        from edgekiln.agents import agent_pb2 as pb

        try:
            self.registry.unload(request.name)
        except ModelLoadError as exc:
            raise Refusal(exc.code, exc.message) from None
        return pb.UnLoadModelResponse()

    @_answers
    def ListModels(self, request: Any, context: Any) -> Any:
        from edgekiln.agents import agent_pb2 as pb

        return pb.ListModelsResponse(models=[_model_message(m) for m in self.registry.list()])

    @_answers
    def DescribeModel(self, request: Any, context: Any) -> Any:
        from edgekiln.agents import agent_pb2 as pb

        return pb.DescribeModelResponse(model=_model_message(self._loaded(request.name)))

    # -- inference -------------------------------------------------------------------
    @_answers
    def Predict(self, request: Any, context: Any) -> Any:
        from edgekiln.agents import agent_pb2 as pb
        from edgekiln.agents.tensors import to_proto

        entry = self._loaded(request.name)
        arrays = _input_arrays(entry, request)
        try:
            outputs = self.registry.predict(entry, arrays)
        except UserError as exc:
            raise Refusal("INVALID_ARGUMENT", exc.one_line()) from None
        except Exception as exc:  # noqa: BLE001 - the model failed to run: INTERNAL, the agent lives on
            log.exception("Predict on %s failed", entry.name)
            raise Refusal("INTERNAL", f"model {entry.name} failed to run: {exc}") from None
        names = entry.model.get_output_names()
        return pb.PredictResponse(tensors=[to_proto(o, n) for o, n in zip(outputs, names)])

    # -- capture ---------------------------------------------------------------------
    @_answers
    def CaptureData(self, request: Any, context: Any) -> Any:
        from edgekiln.agents import agent_pb2 as pb
        from edgekiln.agents import outbox as ob
        from edgekiln.agents.capture import InvalidCapture, TimestampOutOfRange

        refusals = (
            (InvalidCapture, "INVALID_ARGUMENT"),
            (TimestampOutOfRange, "OUT_OF_RANGE"),
            (ob.CaptureExists, "ALREADY_EXISTS"),
            (ob.StoreFull, "RESOURCE_EXHAUSTED"),
            (ob.StoreUnavailable, "UNAVAILABLE"),
        )
        try:
            self.capture.capture(request)
        except NotImplementedError as exc:
            raise Refusal("UNIMPLEMENTED", str(exc)) from None
        except UserError as exc:
            code = next((c for kind, c in refusals if isinstance(exc, kind)), None)
            if code is None:
                raise
            raise Refusal(code, exc.message) from None
        return pb.CaptureDataResponse()

    @_answers
    def GetCaptureDataStatus(self, request: Any, context: Any) -> Any:
        from edgekiln.agents import agent_pb2 as pb
        from edgekiln.agents import outbox as ob

        try:
            status = self.capture.status(request.capture_id)
        except ob.StoreUnavailable as exc:
            raise Refusal("UNAVAILABLE", exc.message) from None
        if status is None:
            raise Refusal("NOT_FOUND", f"no capture with id {request.capture_id[:140]!r}")
        return pb.GetCaptureDataStatusResponse(status=pb.CaptureDataStatus.Value(status))

    # -- benchmark -------------------------------------------------------------------
    def Bench(self, request_iterator: Any, context: Any) -> Any:
        from edgekiln.agents import agent_pb2 as pb
        from edgekiln.agents.bench_relay import _relay_bench

        if not self._bench_slot.acquire(blocking=False):
            abort(
                context,
                "RESOURCE_EXHAUSTED",
                "a benchmark is already running on this agent; one runs at a time so that it has the device to itself",
            )
        released = threading.Lock()

        def release() -> None:
            # Once, from whichever comes first: the RPC's end (a cancelled client's stream
            # generator may only be closed much later, by the garbage collector) or the
            # generator's own end.
            if released.acquire(blocking=False):
                self._bench_slot.release()

        if not context.add_callback(release):
            release()
        try:
            yield from _relay_bench(request_iterator, context, self.registry.model_dir, pb.BenchLine, abort)
        finally:
            release()

    # -- tuning ----------------------------------------------------------------------
    @_answers
    def TimeKernel(self, request: Any, context: Any) -> Any:
        from edgekiln.agents import agent_pb2 as pb
        from edgekiln.agents.kernel_timing import KernelRefusal, time_kernel

        if not self._bench_slot.acquire(blocking=False):
            raise Refusal("RESOURCE_EXHAUSTED", "a benchmark or another kernel is being timed on this agent")
        try:
            costs, checksums = time_kernel(request, self.tuning)
        except KernelRefusal as refusal:
            raise Refusal(refusal.code, refusal.message) from None
        finally:
            self._bench_slot.release()
        return pb.TimeKernelResponse(costs=costs, checksums=checksums)

"""The agent's local API: the gRPC servicer, the loaded-model registry, and a client.

Methods, messages and status codes are the SageMaker Edge Manager agent's (see
``agent.proto``).  Each loaded model has its own lock, so that Predict calls on
different models run at the same time while calls on one model take turns (the TVM
executor of one model is not shared between threads).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from edgekiln.agents.reporter import ModelMetrics
from edgekiln.errors import CompatibilityError, DependencyError, EdgekilnError, IntegrityError, UserError

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


# -- loaded models -------------------------------------------------------------------
class ModelLoadError(UserError):
    """LoadModel failed; ``code`` is the gRPC status code name to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class LoadedModel:
    name: str
    url: str
    model: Any  # edgekiln.runtime.Model
    loaded_at: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    metrics: ModelMetrics = field(default_factory=ModelMetrics)

    @property
    def version(self) -> str:
        return str(self.model.manifest.model.version)


class ModelRegistry:
    """The models the agent has loaded; the list survives restarts (``models.json``)."""

    def __init__(self, model_dir: Path, state_file: Path | None, *, max_models: int = 8,
                 clock: Callable[[], float] = time.time, loader: Callable[[str], Any] | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.state_file = state_file
        self.max_models = max_models
        self.clock = clock
        self._loader = loader
        self._lock = threading.Lock()
        self._models: dict[str, LoadedModel] = {}
        self._loading: set[str] = set()
        self._samples: dict[str, ModelMetrics] = {}
        self.running = 0
        self.max_running = 0

    def resolve(self, url: str) -> Path:
        path = Path(url).expanduser()
        return path if path.is_absolute() else self.model_dir / path

    def load(self, name: str, url: str) -> LoadedModel:
        if not NAME_RE.match(name or ""):
            raise ModelLoadError("INVALID_ARGUMENT", f"model name {name!r} must match ^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")
        if not url:
            raise ModelLoadError("INVALID_ARGUMENT", "url is empty: give the artifact's path")
        path = self.resolve(url)
        with self._lock:
            if name in self._models or name in self._loading:
                raise ModelLoadError("ALREADY_EXISTS", f"a model named {name!r} is already loaded")
            if len(self._models) + len(self._loading) >= self.max_models:
                raise ModelLoadError("RESOURCE_EXHAUSTED", f"{self.max_models} models are loaded (agent.max_models); "
                                     "unload one first")
            self._loading.add(name)
        try:
            if not path.exists():
                raise ModelLoadError("NOT_FOUND", f"no model artifact at {path}")
            model = self._open(path)
            entry = LoadedModel(name=name, url=str(path), model=model, loaded_at=self.clock())
            with self._lock:
                entry.metrics = self._samples.pop(name, entry.metrics)
                self._models[name] = entry
            self._save()
            return entry
        finally:
            with self._lock:
                self._loading.discard(name)

    def _open(self, path: Path) -> Any:
        try:
            if self._loader is not None:
                return self._loader(str(path))
            from edgekiln.runtime import Model

            return Model(path)
        except CompatibilityError as exc:
            raise ModelLoadError("FAILED_PRECONDITION", exc.one_line()) from None
        except DependencyError as exc:
            raise ModelLoadError("FAILED_PRECONDITION", exc.one_line()) from None
        except (IntegrityError, UserError) as exc:
            raise ModelLoadError("INVALID_ARGUMENT", exc.one_line()) from None
        except EdgekilnError as exc:
            raise ModelLoadError("INTERNAL", exc.one_line()) from None
        except MemoryError:
            raise ModelLoadError("RESOURCE_EXHAUSTED", f"not enough memory to load {path}") from None
        except OSError as exc:
            raise ModelLoadError("INVALID_ARGUMENT", f"{path} cannot be read as an artifact: {exc}") from None

    def unload(self, name: str) -> None:
        with self._lock:
            entry = self._models.pop(name, None)
            if entry is None:
                raise ModelLoadError("NOT_FOUND", f"no model named {name!r} is loaded")
        with entry.lock:  # let a running Predict finish before the executor goes
            pass
        self._save()

    def get(self, name: str) -> LoadedModel | None:
        with self._lock:
            return self._models.get(name)

    def list(self) -> list[LoadedModel]:
        with self._lock:
            return sorted(self._models.values(), key=lambda m: m.name)

    def note_sample(self, name: str, now: float) -> None:
        with self._lock:
            entry = self._models.get(name)
            metrics = entry.metrics if entry else self._samples.setdefault(name, ModelMetrics())
        metrics.sample(now)

    def snapshots(self) -> list[dict[str, Any]]:
        """Per-model metrics for heartbeats (models captured for but not loaded included)."""
        with self._lock:
            loaded = [(m.name, m.version, m.metrics) for m in self._models.values()]
            sampled = [(n, "", m) for n, m in self._samples.items() if n not in self._models]
        return [{"model_name": n, "model_version": v, "metrics": m.snapshot()} for n, v, m in sorted(loaded + sampled)]

    def predict(self, entry: LoadedModel, arrays: list[Any]) -> list[Any]:
        with entry.lock:
            with self._lock:
                self.running += 1
                self.max_running = max(self.max_running, self.running)
            start = time.perf_counter()
            ok = False
            try:
                outputs = entry.model.run(arrays)
                ok = True
                return outputs
            finally:
                entry.metrics.record(time.perf_counter() - start, ok, self.clock())
                with self._lock:
                    self.running -= 1

    # -- persistence of the loaded list ---------------------------------------------
    def _save(self) -> None:
        if self.state_file is None:
            return
        with self._lock:
            data = [{"name": m.name, "url": m.url} for m in self._models.values()]
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        tmp.write_text(json.dumps({"models": data}, indent=1))
        os.replace(tmp, self.state_file)

    def saved(self) -> list[dict[str, str]]:
        if self.state_file is None or not self.state_file.is_file():
            return []
        try:
            data = json.loads(self.state_file.read_text())
            return [{"name": str(m["name"]), "url": str(m["url"])} for m in data.get("models", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("ignoring unreadable %s", self.state_file)
            return []


# -- the servicer --------------------------------------------------------------------
def _model_message(entry: LoadedModel) -> Any:
    from edgekiln.agents import agent_pb2 as pb
    from edgekiln.agents.tensors import metadata

    manifest = entry.model.manifest
    return pb.Model(
        url=entry.url, name=entry.name,
        input_tensor_metadatas=[metadata(t.name, t.dtype, t.shape) for t in manifest.inputs],
        output_tensor_metadatas=[metadata(t.name, t.dtype, t.shape) for t in manifest.outputs])


def make_servicer(registry: ModelRegistry, capture: Any) -> Any:
    """The Agent servicer over a model registry and a CaptureService."""
    import grpc

    from edgekiln.agents import agent_pb2 as pb
    from edgekiln.agents import agent_pb2_grpc as pb_grpc
    from edgekiln.agents import outbox as ob
    from edgekiln.agents.capture import FutureTimestamp, InvalidCapture
    from edgekiln.agents.tensors import TensorError, from_proto, to_proto

    def abort(context: Any, code: str, message: str) -> None:
        context.abort(getattr(grpc.StatusCode, code), " ".join(message.split()))

    class Servicer(pb_grpc.AgentServicer):
        def LoadModel(self, request: Any, context: Any) -> Any:
            try:
                entry = registry.load(request.name, request.url)
            except ModelLoadError as exc:
                abort(context, exc.code, exc.message)
            log.info("loaded model %s from %s", entry.name, entry.url)
            return pb.LoadModelResponse(model=_model_message(entry))

        def UnLoadModel(self, request: Any, context: Any) -> Any:
            try:
                registry.unload(request.name)
            except ModelLoadError as exc:
                abort(context, exc.code, exc.message)
            return pb.UnLoadModelResponse()

        def ListModels(self, request: Any, context: Any) -> Any:
            return pb.ListModelsResponse(models=[_model_message(m) for m in registry.list()])

        def DescribeModel(self, request: Any, context: Any) -> Any:
            entry = registry.get(request.name)
            if entry is None:
                abort(context, "NOT_FOUND", f"no model named {request.name!r} is loaded")
            return pb.DescribeModelResponse(model=_model_message(entry))

        def Predict(self, request: Any, context: Any) -> Any:
            entry = registry.get(request.name)
            if entry is None:
                abort(context, "NOT_FOUND", f"no model named {request.name!r} is loaded")
            specs = entry.model.manifest.inputs
            if len(request.tensors) != len(specs):
                abort(context, "INVALID_ARGUMENT",
                      f"model {entry.name} takes {len(specs)} input tensor(s), got {len(request.tensors)}")
            by_name = {t.tensor_metadata.name: t for t in request.tensors if t.tensor_metadata.name}
            try:
                if len(by_name) == len(specs):
                    missing = [s.name for s in specs if s.name not in by_name]
                    if missing:
                        raise TensorError(f"model {entry.name} has no input named "
                                          f"{sorted(set(by_name) - {s.name for s in specs})}; "
                                          f"its inputs are {[s.name for s in specs]}")
                    tensors = [by_name[s.name] for s in specs]
                else:
                    tensors = list(request.tensors)
                arrays = [from_proto(t, name=s.name, dtype=s.dtype, shape=s.shape) for t, s in zip(tensors, specs)]
            except NotImplementedError as exc:
                abort(context, "UNIMPLEMENTED", str(exc))
            except TensorError as exc:
                abort(context, "INVALID_ARGUMENT", exc.message)
            try:
                outputs = registry.predict(entry, arrays)
            except UserError as exc:
                abort(context, "INVALID_ARGUMENT", exc.one_line())
            except Exception as exc:  # the model failed to run: an INTERNAL status, the agent lives on
                log.exception("Predict on %s failed", entry.name)
                abort(context, "INTERNAL", f"model {entry.name} failed to run: {exc}")
            names = entry.model.get_output_names()
            return pb.PredictResponse(tensors=[to_proto(o, n) for o, n in zip(outputs, names)])

        def CaptureData(self, request: Any, context: Any) -> Any:
            try:
                capture.capture(request)
            except InvalidCapture as exc:
                abort(context, "INVALID_ARGUMENT", exc.message)
            except FutureTimestamp as exc:
                abort(context, "OUT_OF_RANGE", exc.message)
            except NotImplementedError as exc:
                abort(context, "UNIMPLEMENTED", str(exc))
            except ob.CaptureExists as exc:
                abort(context, "ALREADY_EXISTS", exc.message)
            except ob.StoreFull as exc:
                abort(context, "RESOURCE_EXHAUSTED", exc.message)
            except ob.StoreUnavailable as exc:
                abort(context, "UNAVAILABLE", exc.message)
            return pb.CaptureDataResponse()

        def GetCaptureDataStatus(self, request: Any, context: Any) -> Any:
            try:
                status = capture.status(request.capture_id)
            except ob.StoreUnavailable as exc:
                abort(context, "UNAVAILABLE", exc.message)
            if status is None:
                abort(context, "NOT_FOUND", f"no capture with id {request.capture_id!r}")
            return pb.GetCaptureDataStatusResponse(status=pb.CaptureDataStatus.Value(status))

        def Bench(self, request_iterator: Any, context: Any) -> Any:
            if not bench_slot.acquire(blocking=False):
                abort(context, "RESOURCE_EXHAUSTED", "a benchmark is already running on this agent; "
                      "one runs at a time so that it has the device to itself")
            released = threading.Lock()

            def release() -> None:
                # Once, from whichever comes first: the RPC's end (a cancelled client's stream
                # generator may only be closed much later, by the garbage collector) or the
                # generator's own end.
                if released.acquire(blocking=False):
                    bench_slot.release()

            if not context.add_callback(release):
                release()
            try:
                yield from _relay_bench(request_iterator, context, registry.model_dir, pb.BenchLine, abort)
            finally:
                release()

    bench_slot = threading.Lock()
    return Servicer()


# -- the benchmark relay -------------------------------------------------------------
def _relay_bench(requests: Any, context: Any, model_dir: Path, line_type: Any,
                 abort: Callable[[Any, str, str], None]) -> Any:
    """Relay one Bench stream to a worker process (:mod:`edgekiln.execute.worker`).

    The worker is a process of its own (not a thread of the agent) so that its peak RSS is
    the model's and a crash takes only the worker.  Lines go to its stdin as they come; its
    stdout lines go back unchanged; the stream ends when it exits, with trailing metadata
    ``exit-code`` and ``ru-maxrss-kb``.  The client going away kills it.
    """
    from edgekiln.execute.runners import relay, start_local_worker

    try:
        first = next(requests)
    except StopIteration:
        return  # the client closed before sending anything: no worker to start
    try:
        channel = start_local_worker("the benchmark worker", cwd=model_dir if Path(model_dir).is_dir() else None)
    except DependencyError as exc:
        abort(context, "UNAVAILABLE", exc.one_line())
    log.info("bench: worker %d started", channel.pid)
    context.add_callback(channel.kill)  # the call ended (client gone, cancelled, deadline): stop the worker
    try:
        for line in relay(channel, (m.json for m in _chain(first, requests))):
            yield line_type(json=line)
        info = channel.close()
        code, failure = channel.returncode, channel.failure()
        log.info("bench: worker %d exited with %s", channel.pid, code)
        context.set_trailing_metadata((("exit-code", str(code)), ("ru-maxrss-kb", str(info.ru_maxrss_kb or 0))))
        if failure:
            abort(context, "INTERNAL", f"the benchmark worker failed: {failure}")
    finally:
        channel.kill()
        channel.close()


def _chain(first: Any, rest: Any) -> Any:
    yield first
    yield from rest


def serve(socket_path: Path, servicer: Any, *, max_workers: int = 8) -> Any:
    """Start a gRPC server for ``servicer`` on a Unix socket with mode 0660."""
    import socket as socketlib
    from concurrent import futures

    import grpc

    from edgekiln.agents import agent_pb2_grpc as pb_grpc

    socket_path = Path(socket_path)
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    if socket_path.exists() or socket_path.is_symlink():
        probe = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
        try:
            probe.settimeout(0.5)
            probe.connect(str(socket_path))
        except OSError:
            socket_path.unlink()  # left behind by an agent that died
        else:
            raise UserError(f"another agent is serving on {socket_path}")
        finally:
            probe.close()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="agent-rpc"),
                         options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                  ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
    pb_grpc.add_AgentServicer_to_server(servicer, server)
    # The umask decides the mode at bind(); tighten it so the socket is never world-writable.
    old = os.umask(0o117)
    try:
        if server.add_insecure_port(f"unix:{socket_path}") == 0:
            raise UserError(f"cannot listen on {socket_path}")
        server.start()
    finally:
        os.umask(old)
    os.chmod(socket_path, 0o660)
    return server


# -- the client ----------------------------------------------------------------------
class AgentCallError(UserError):
    """A call to the agent failed; ``code`` is the gRPC status code name."""

    def __init__(self, method: str, code: str, details: str) -> None:
        super().__init__(f"{method}: {code}: {details}")
        self.method = method
        self.code = code
        self.details = details


class AgentClient:
    """A Python client for the agent's local API.

    ``with AgentClient("/run/edgekiln/agent.sock") as agent: agent.predict("m", x)``.
    """

    def __init__(self, socket_path: str | os.PathLike[str], timeout: float = 30.0) -> None:
        import grpc

        from edgekiln.agents import agent_pb2_grpc as pb_grpc

        self.socket_path = str(socket_path)
        self.timeout = timeout
        self._channel = grpc.insecure_channel(f"unix:{self.socket_path}", options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # A local socket is cheap to retry: find a restarted agent within a fraction of a
            # second, not after gRPC's default back-off of up to two minutes.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000)])
        self._stub = pb_grpc.AgentStub(self._channel)

    def __enter__(self) -> "AgentClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the agent answers (or raise AgentCallError UNAVAILABLE)."""
        import grpc

        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise AgentCallError("connect", "UNAVAILABLE", f"no agent answered on {self.socket_path} "
                                 f"within {timeout:g} s") from None

    def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        import grpc

        try:
            return getattr(self._stub, method)(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            code = exc.code().name if exc.code() else "UNKNOWN"
            details = exc.details() or ""
            if code == "UNAVAILABLE":
                details = f"no agent reachable on {self.socket_path} ({details})"
            raise AgentCallError(method, code, details) from None

    # -- model management ------------------------------------------------------------
    def load_model(self, url: str | os.PathLike[str], name: str) -> dict[str, Any]:
        from edgekiln.agents import agent_pb2 as pb

        return model_dict(self._call("LoadModel", pb.LoadModelRequest(url=str(url), name=name), 300).model)

    def unload_model(self, name: str) -> None:
        from edgekiln.agents import agent_pb2 as pb

        self._call("UnLoadModel", pb.UnLoadModelRequest(name=name))

    def list_models(self) -> list[dict[str, Any]]:
        from edgekiln.agents import agent_pb2 as pb

        return [model_dict(m) for m in self._call("ListModels", pb.ListModelsRequest()).models]

    def describe_model(self, name: str) -> dict[str, Any]:
        from edgekiln.agents import agent_pb2 as pb

        return model_dict(self._call("DescribeModel", pb.DescribeModelRequest(name=name)).model)

    # -- inference -------------------------------------------------------------------
    def predict(self, name: str, inputs: Any) -> list[Any]:
        """Run model ``name`` on one array, a list in input order, or name → array."""
        import numpy as np

        from edgekiln.agents import agent_pb2 as pb
        from edgekiln.agents.tensors import from_proto, to_proto

        if isinstance(inputs, np.ndarray):
            tensors = [to_proto(inputs)]
        elif isinstance(inputs, Mapping):
            tensors = [to_proto(v, k) for k, v in inputs.items()]
        else:
            tensors = [to_proto(v) for v in inputs]
        response = self._call("Predict", pb.PredictRequest(name=name, tensors=tensors))
        return [np.array(from_proto(t)) for t in response.tensors]

    def predict_image(self, name: str, image: Any, top_k: int = 5) -> dict[str, Any]:
        """Classify an image with model ``name``: preprocessed here as its manifest says
        (the artifact is on this device), run by the agent; returns tensor and top-k."""
        from edgekiln.runtime.model import top_classes
        from edgekiln.runtime.preprocess import preprocess

        described = self.describe_model(name)
        manifest, labels = read_artifact_info(described["url"])
        if not manifest.preprocessing or len(manifest.inputs) != 1:
            raise UserError(f"model {name} records no image preprocessing; send tensors with predict()")
        tensor = preprocess(image, manifest.preprocessing, manifest.inputs[0].shape)
        outputs = self.predict(name, {manifest.inputs[0].name: tensor})
        return {"input": tensor, "outputs": outputs,
                "top": top_classes(outputs[0].reshape(-1), labels, top_k)}

    # -- capture ---------------------------------------------------------------------
    def capture(self, model_name: str, *, capture_id: str | None = None,
                input_tensors: Sequence[Any] | Mapping[str, Any] = (),
                output_tensors: Sequence[Any] | Mapping[str, Any] = (),
                inputs: Mapping[str, tuple[str, bytes]] | None = None,
                outputs: Mapping[str, tuple[str, bytes]] | None = None,
                inference_time: float | None = None) -> str:
        """Capture tensors and auxiliary data (name → (encoding, bytes)); returns the id."""
        from edgekiln.agents import agent_pb2 as pb
        from edgekiln.agents.tensors import to_proto

        def tensors(value: Any) -> list[Any]:
            items = value.items() if isinstance(value, Mapping) else ((f"t{i}", v) for i, v in enumerate(value))
            return [to_proto(v, k) for k, v in items]

        def aux(value: Mapping[str, tuple[str, bytes]] | None) -> list[Any]:
            return [pb.AuxilaryData(name=k, encoding=pb.Encoding.Value(enc), byte_data=data)
                    for k, (enc, data) in (value or {}).items()]

        capture_id = capture_id or str(uuid.uuid4())
        request = pb.CaptureDataRequest(model_name=model_name, capture_id=capture_id,
                                        input_tensors=tensors(input_tensors), output_tensors=tensors(output_tensors),
                                        inputs=aux(inputs), outputs=aux(outputs))
        when = time.time() if inference_time is None else inference_time
        request.inference_timestamp.seconds = int(when)
        request.inference_timestamp.nanos = int((when - int(when)) * 1e9)
        self._call("CaptureData", request)
        return capture_id

    def capture_status(self, capture_id: str) -> str:
        """SUCCESS, IN_PROGRESS or FAILURE (NOT_FOUND raises AgentCallError)."""
        from edgekiln.agents import agent_pb2 as pb

        response = self._call("GetCaptureDataStatus", pb.GetCaptureDataStatusRequest(capture_id=capture_id))
        return pb.CaptureDataStatus.Name(response.status)


def model_dict(model: Any) -> dict[str, Any]:
    from edgekiln.agents.tensors import DTYPE_NAMES

    def tensors(items: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "dtype": DTYPE_NAMES.get(t.data_type, str(t.data_type)), "shape": list(t.shape)}
                for t in items]

    return {"name": model.name, "url": model.url, "inputs": tensors(model.input_tensor_metadatas),
            "outputs": tensors(model.output_tensor_metadatas)}


def read_artifact_info(url: str) -> tuple[Any, list[str] | None]:
    """The manifest and labels of an artifact file or directory on this device."""
    import tarfile

    from edgekiln.artifact import MANIFEST_NAME, Manifest, read_manifest

    path = Path(url)
    if path.is_dir():
        manifest = Manifest.from_json((path / MANIFEST_NAME).read_bytes())
        text = (path / manifest.labels).read_text(encoding="utf-8") if manifest.labels else None
    else:
        manifest = read_manifest(path)
        text = None
        if manifest.labels:
            with tarfile.open(path, "r:*") as tar:
                member = tar.getmember(manifest.labels)
                if member.isfile():
                    fh = tar.extractfile(member)
                    text = fh.read().decode("utf-8") if fh else None
    labels = [line for line in text.splitlines() if line and not line.startswith("#")] if text else None
    return manifest, labels

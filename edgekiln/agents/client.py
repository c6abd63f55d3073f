"""A Python client for the agent's local API, and what it reads of artifacts on this device."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

from edgekiln.agents.server import MAX_MESSAGE_BYTES
from edgekiln.errors import UserError


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
        self._channel = grpc.insecure_channel(
            f"unix:{self.socket_path}",
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                # A local socket is cheap to retry: find a restarted agent within a fraction of a
                # second, not after gRPC's default back-off of up to two minutes.
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ],
        )
        self._stub = pb_grpc.AgentStub(self._channel)

    def __enter__(self) -> AgentClient:
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
            raise AgentCallError(
                "connect", "UNAVAILABLE", f"no agent answered on {self.socket_path} within {timeout:g} s"
            ) from None

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
        """Classify an image (path, PIL image, HxWx3 or HxW uint8 array) with model ``name``:
        preprocessed here as its manifest says (the artifact is on this device), run by the
        agent; returns tensor, outputs and top-k (see :func:`edgekiln.runtime.model.top_classes`)."""
        from edgekiln.runtime.model import top_classes
        from edgekiln.runtime.preprocess import preprocess

        described = self.describe_model(name)
        manifest, labels = read_artifact_info(described["url"])
        if not manifest.preprocessing or len(manifest.inputs) != 1:
            raise UserError(
                f"model {name} records no image preprocessing",
                hint="compile it with --preprocess (e.g. imagenet-torch), or send tensors with predict()",
            )
        tensor = preprocess(image, manifest.preprocessing, manifest.inputs[0].shape)
        outputs = self.predict(name, {manifest.inputs[0].name: tensor})
        top = top_classes(outputs[0].reshape(-1), labels, top_k, manifest.scores)
        return {"input": tensor, "outputs": outputs, "top": top}

    # -- capture ---------------------------------------------------------------------
    def capture(
        self,
        model_name: str,
        *,
        capture_id: str | None = None,
        input_tensors: Sequence[Any] | Mapping[str, Any] = (),
        output_tensors: Sequence[Any] | Mapping[str, Any] = (),
        inputs: Mapping[str, tuple[str, bytes]] | None = None,
        outputs: Mapping[str, tuple[str, bytes]] | None = None,
        inference_time: float | None = None,
    ) -> str:
        """Capture tensors and auxiliary data (name → (encoding, bytes)); returns the id."""
        from edgekiln.agents import agent_pb2 as pb
        from edgekiln.agents.tensors import to_proto

        def tensors(value: Any) -> list[Any]:
            items = value.items() if isinstance(value, Mapping) else ((f"t{i}", v) for i, v in enumerate(value))
            return [to_proto(v, k) for k, v in items]

        def aux(value: Mapping[str, tuple[str, bytes]] | None) -> list[Any]:
            return [
                pb.AuxilaryData(name=k, encoding=pb.Encoding.Value(enc), byte_data=data)
                for k, (enc, data) in (value or {}).items()
            ]

        capture_id = capture_id or str(uuid.uuid4())
        request = pb.CaptureDataRequest(
            model_name=model_name,
            capture_id=capture_id,
            input_tensors=tensors(input_tensors),
            output_tensors=tensors(output_tensors),
            inputs=aux(inputs),
            outputs=aux(outputs),
        )
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

    def time_kernel(
        self,
        kernel: bytes,
        runtime_library: bytes,
        arguments: Sequence[tuple[str, Sequence[int]]],
        *,
        number: int = 3,
        repeat: int = 1,
        min_repeat_ms: int = 100,
        seed: int = 0,
        timeout: float = 300.0,
    ) -> tuple[list[float], list[float]]:
        """Time a kernel library on the device (TimeKernel): (seconds per call for each
        repeat, each argument's sum after one call). ``arguments`` are (dtype, shape)."""
        from edgekiln.agents import agent_pb2 as pb

        request = pb.TimeKernelRequest(
            kernel=kernel,
            runtime_library=runtime_library,
            arguments=[pb.KernelArgument(dtype=d, shape=list(s)) for d, s in arguments],
            number=number,
            repeat=repeat,
            min_repeat_ms=min_repeat_ms,
            seed=seed,
        )
        response = self._call("TimeKernel", request, timeout)
        return list(response.costs), list(response.checksums)


def model_dict(model: Any) -> dict[str, Any]:
    from edgekiln.agents.tensors import DTYPE_NAMES

    def tensors(items: Any) -> list[dict[str, Any]]:
        return [
            {"name": t.name, "dtype": DTYPE_NAMES.get(t.data_type, str(t.data_type)), "shape": list(t.shape)}
            for t in items
        ]

    return {
        "name": model.name,
        "url": model.url,
        "inputs": tensors(model.input_tensor_metadatas),
        "outputs": tensors(model.output_tensor_metadatas),
    }


def read_artifact_info(url: str) -> tuple[Any, list[str] | None]:
    """The manifest and labels of an artifact file or directory on this device.

    Read through the artifact layer's checks: a packed artifact is verified and unpacked
    (every member listed, inside it, of the listed size and sha256); the labels must be
    one of the files the manifest lists, inside the artifact, and match its sha256.
    """
    import tempfile

    from edgekiln.artifact import MANIFEST_NAME, Manifest
    from edgekiln.artifact.package import unpack
    from edgekiln.errors import IntegrityError

    path = Path(url)
    if path.is_dir():
        try:
            manifest = Manifest.from_json((path / MANIFEST_NAME).read_bytes())
        except OSError as exc:
            raise IntegrityError(f"{path} holds no readable {MANIFEST_NAME}: {exc.strerror}") from None
        return manifest, _labels(manifest, path)
    with tempfile.TemporaryDirectory(prefix="edgekiln-info-") as tmp:
        manifest = unpack(path, Path(tmp) / "a")
        return manifest, _labels(manifest, Path(tmp) / "a")


def _labels(manifest: Any, root: Path) -> list[str] | None:
    from edgekiln.artifact.package import sha256_file
    from edgekiln.artifact.paths import MAX_LABELS_BYTES, read_labels, resolve_member
    from edgekiln.errors import IntegrityError

    if not manifest.labels:
        return None
    entry = next((f for f in manifest.files if f.path == manifest.labels), None)
    if entry is None:
        raise IntegrityError(f"the manifest's labels {manifest.labels[:200]!r} are not one of its listed files")
    # The artifact layer's one path rule: inside the artifact, through no symlink.
    file = resolve_member(root, entry.path)
    if not file.is_file():
        raise IntegrityError(f"the labels file {entry.path[:200]!r} is not a regular file inside {root}")
    if entry.size > MAX_LABELS_BYTES or file.stat().st_size != entry.size or sha256_file(file) != entry.sha256:
        raise IntegrityError(f"the labels file {entry.path[:200]!r} differs from the manifest or is too large")
    return read_labels(root, entry.path)

"""Data capture: validate CaptureData requests, store them, and encode delivered batches.

A capture record is the serialised ``CaptureDataRequest`` (tensors and auxiliary data);
it is written to the :class:`~edgekiln.agents.outbox.Outbox` before CaptureData returns.
Delivery encodes a batch as one JSON Lines object, one line per record; tensors and
auxiliary data up to ``base64_embed_limit`` bytes are embedded as base64, larger ones go
to objects of their own next to the batch and the line names them (key relative to the
device's prefix, size and sha256).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, Callable

from edgekiln.agents import outbox as ob
from edgekiln.agents import outbox_db as odb
from edgekiln.agents.batches import Batch
from edgekiln.artifact.names import check_name
from edgekiln.errors import UserError

# How far an inference timestamp may lie ahead of the agent's clock (clock skew between
# the application and the agent) before CaptureData answers OUT_OF_RANGE.
FUTURE_SKEW_SECONDS = 5.0
ENCODINGS = {0: "CSV", 1: "JSON", 2: "NONE", 3: "BASE64"}


class InvalidCapture(UserError):
    """A CaptureData request that is malformed (bad id or model name, no data)."""


class TimestampOutOfRange(UserError):
    """The inference timestamp lies before 1970 or past what a batch can carry."""


class FutureTimestamp(TimestampOutOfRange):
    """The inference timestamp lies in the future."""


class CaptureService:
    """Accepts captures into the outbox and answers status queries."""

    def __init__(
        self,
        outbox: ob.Outbox,
        *,
        clock: Callable[[], float] = time.time,
        on_sample: Callable[[str, float], None] | None = None,
    ) -> None:
        self.outbox = outbox
        self.clock = clock
        self.on_sample = on_sample

    def capture(self, request: Any) -> None:
        """Validate and store one CaptureDataRequest; durable when this returns.

        Raises InvalidCapture, FutureTimestamp, NotImplementedError (shared memory),
        outbox.CaptureExists or outbox.StoreFull.
        """
        if not ob.RECORD_ID_RE.fullmatch(request.capture_id):
            raise InvalidCapture(
                f"capture_id {request.capture_id!r} is not of the expected format "
                "(1-128 letters, digits, '_', '.', ':', '-'; a UUID works)"
            )
        # The fleet's rule: a name it refuses would make a batch that can never be delivered.
        try:
            check_name(request.model_name, "model_name")
        except UserError as exc:
            raise InvalidCapture(exc.one_line()) from None
        items = [*request.input_tensors, *request.output_tensors, *request.inputs, *request.outputs]
        if not items:
            raise InvalidCapture("a capture needs at least one tensor or auxiliary data item")
        for item in items:
            if item.WhichOneof("data") == "shared_memory_handle":
                raise NotImplementedError("shared memory handles are not supported; send byte_data")
        now = self.clock()
        if request.HasField("inference_timestamp"):
            stamp = request.inference_timestamp
            if stamp.seconds < 0 or not 0 <= stamp.nanos < 1_000_000_000:
                # A batch must be able to write it as a date (and the fleet to read it).
                raise TimestampOutOfRange(
                    f"inference_timestamp {stamp.seconds}.{stamp.nanos} must lie between "
                    "1970 and now (seconds >= 0, 0 <= nanos < 1e9)"
                )
            ts = stamp.seconds + stamp.nanos / 1e9
            if ts > now + FUTURE_SKEW_SECONDS:
                raise FutureTimestamp(f"inference_timestamp {ts:.3f} is in the future (agent clock {now:.3f})")
        else:
            request.inference_timestamp.seconds = int(now)
            request.inference_timestamp.nanos = int((now - int(now)) * 1e9)
        self.outbox.add_record(request.capture_id, request.model_name, request.SerializeToString(deterministic=True))
        if self.on_sample is not None:
            self.on_sample(request.model_name, now)

    def status(self, capture_id: str) -> str | None:
        """ready/in-flight → IN_PROGRESS, acked → SUCCESS, dropped or dead-letter → FAILURE,
        None → unknown."""
        state = self.outbox.status(capture_id)
        if state is None:
            return None
        return {
            odb.READY: "IN_PROGRESS",
            odb.IN_FLIGHT: "IN_PROGRESS",
            odb.ACKED: "SUCCESS",
            odb.DROPPED: "FAILURE",
            odb.DEAD_LETTER: "FAILURE",
        }[state]


@dataclass(frozen=True)
class EncodedBatch:
    """A batch ready to deliver: the JSON Lines object and the large items' objects."""

    key: str
    body: bytes
    objects: dict[str, bytes]  # relative key -> bytes
    record_ids: tuple[str, ...]
    missing: tuple[str, ...]  # records whose payload could not be read


def encode_batch(
    batch: Batch, read: Callable[[str], bytes | None], *, fleet: str, device: str, embed_limit: int
) -> EncodedBatch:
    """Encode ``batch``; ``read(record_id)`` returns a record's payload (None if gone)."""
    from edgekiln.agents import agent_pb2 as pb
    from edgekiln.agents.tensors import ENUM_NAMES

    lines: list[bytes] = []
    objects: dict[str, bytes] = {}
    present: list[str] = []
    missing: list[str] = []
    base = batch.key[: -len(".jsonl")] if batch.key.endswith(".jsonl") else batch.key

    def item(kind: str, index: int, record_id: str, data: bytes, extra: dict[str, Any]) -> dict[str, Any]:
        entry = dict(extra)
        if len(data) <= embed_limit:
            entry.update(encoding_in_record="BASE64", data=base64.b64encode(data).decode("ascii"))
        else:
            key = f"{base}/{record_id}/{kind}-{index}.bin"
            objects[key] = data
            entry.update(object=key, size=len(data), sha256=hashlib.sha256(data).hexdigest())
        return entry

    for rid in batch.record_ids:
        payload = read(rid)
        if payload is None:
            missing.append(rid)
            continue
        request = pb.CaptureDataRequest.FromString(payload)
        ts = request.inference_timestamp.seconds + request.inference_timestamp.nanos / 1e9
        line: dict[str, Any] = {
            "record_id": rid,
            "fleet": fleet,
            "device": device,
            "model_name": request.model_name,
            "inference_timestamp": _iso(ts),
        }
        for field_name, kind in (("input_tensors", "input-tensor"), ("output_tensors", "output-tensor")):
            line[field_name] = [
                item(
                    kind,
                    i,
                    rid,
                    t.byte_data,
                    {
                        "name": t.tensor_metadata.name,
                        "data_type": ENUM_NAMES.get(t.tensor_metadata.data_type, str(t.tensor_metadata.data_type)),
                        "shape": list(t.tensor_metadata.shape),
                    },
                )
                for i, t in enumerate(getattr(request, field_name))
            ]
        for field_name, kind in (("inputs", "input-aux"), ("outputs", "output-aux")):
            line[field_name] = [
                item(kind, i, rid, a.byte_data, {"name": a.name, "encoding": ENCODINGS.get(a.encoding, "NONE")})
                for i, a in enumerate(getattr(request, field_name))
            ]
        lines.append(json.dumps(line, separators=(",", ":"), sort_keys=True).encode())
        present.append(rid)
    body = b"\n".join(lines) + (b"\n" if lines else b"")
    return EncodedBatch(batch.key, body, objects, tuple(present), tuple(missing))


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1e6):06d}Z"

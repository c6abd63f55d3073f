"""Capture validation and the JSON Lines encoding of delivered batches."""

from __future__ import annotations

import base64
import hashlib
import json

import numpy as np
import pytest

from edgekiln.agents import agent_pb2 as pb
from edgekiln.agents import outbox as ob
from edgekiln.agents import outbox_db as odb
from edgekiln.agents.capture import CaptureService, FutureTimestamp, InvalidCapture, encode_batch
from edgekiln.agents.tensors import TensorError, from_proto, to_proto


@pytest.fixture
def service(tmp_path, fake_clock):
    box = ob.Outbox(tmp_path / "o", storage_limit_bytes=4 << 20, max_records=100, clock=fake_clock, durable=False)
    box.open()
    yield CaptureService(box, clock=fake_clock), box
    box.close()


def request(capture_id="c1", model="m", small=None, big=None, ts=None):
    small = np.arange(3, dtype=np.int32) if small is None else small
    req = pb.CaptureDataRequest(
        model_name=model,
        capture_id=capture_id,
        input_tensors=[to_proto(small, "in")],
        outputs=[pb.AuxilaryData(name="label", encoding=pb.JSON, byte_data=b'{"c": 3}')],
    )
    if big is not None:
        req.output_tensors.append(to_proto(big, "out"))
    if ts is not None:
        req.inference_timestamp.seconds = int(ts)
    return req


def test_validation(service, fake_clock):
    capture, _ = service
    with pytest.raises(InvalidCapture, match="capture_id"):
        capture.capture(request(capture_id="../../etc"))
    with pytest.raises(InvalidCapture, match="model_name"):
        capture.capture(request(model="a b"))
    with pytest.raises(InvalidCapture, match="at least one"):
        capture.capture(pb.CaptureDataRequest(model_name="m", capture_id="x"))
    with pytest.raises(FutureTimestamp):
        capture.capture(request(ts=fake_clock.now + 60))
    shm = request()
    shm.inputs.append(pb.AuxilaryData(name="s", shared_memory_handle=pb.SharedMemoryHandle(size=1)))
    with pytest.raises(NotImplementedError):
        capture.capture(shm)
    capture.capture(request())  # no timestamp: the agent stamps it
    assert capture.status("c1") == "IN_PROGRESS" and capture.status("zz") is None


@pytest.mark.parametrize("model", ["m" * 64, "m" * 200, "m\n", "-m", "m-", ""])
def test_names_the_fleet_refuses_are_refused_at_capture(service, model):
    # A name the fleet refuses (longer than its key segment limit, a trailing newline that
    # "$" let through) would make a batch that can never be delivered.
    capture, box = service
    capture_id = "ok-1"
    with pytest.raises(InvalidCapture, match="model_name"):
        capture.capture(request(capture_id=capture_id, model=model))
    assert box.status(capture_id) is None
    with pytest.raises(InvalidCapture, match="capture_id"):
        capture.capture(request(capture_id="c1\n"))
    capture.capture(request(capture_id=capture_id, model="m" * 63))
    assert box.status(capture_id) == odb.READY


def test_batches_embed_small_items_and_split_large_ones(service, fake_clock):
    capture, box = service
    big = np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32)
    capture.capture(request("small-1"))
    capture.capture(request("large-1", big=big))
    (batch,) = box.form_batches(2, flush_after=None)
    encoded = encode_batch(batch, box.read_record, fleet="f", device="d", embed_limit=256)
    lines = [json.loads(line) for line in encoded.body.decode().splitlines()]
    assert [line["record_id"] for line in lines] == ["small-1", "large-1"]
    first = lines[0]
    assert first["fleet"] == "f" and first["device"] == "d" and first["model_name"] == "m"
    tensor = first["input_tensors"][0]
    assert (tensor["name"], tensor["data_type"], tensor["shape"]) == ("in", "INT32", [3])
    assert np.array_equal(np.frombuffer(base64.b64decode(tensor["data"]), "<i4"), np.arange(3))
    assert base64.b64decode(first["outputs"][0]["data"]) == b'{"c": 3}' and first["outputs"][0]["encoding"] == "JSON"
    out = lines[1]["output_tensors"][0]
    assert out["object"] in encoded.objects and out["size"] == big.nbytes
    data = encoded.objects[out["object"]]
    assert hashlib.sha256(data).hexdigest() == out["sha256"]
    assert np.array_equal(np.frombuffer(data, "<f4").reshape(16, 16), big)
    assert out["object"].startswith(batch.key[: -len(".jsonl")] + "/large-1/")
    again = encode_batch(batch, box.read_record, fleet="f", device="d", embed_limit=256)
    assert again.body == encoded.body  # a resent batch is byte for byte the same object


def test_missing_payloads_are_reported(service):
    capture, box = service
    capture.capture(request("a"))
    capture.capture(request("b"))
    (batch,) = box.form_batches(2, flush_after=None)
    (box.records_dir / "a").unlink()
    encoded = encode_batch(batch, box.read_record, fleet="f", device="d", embed_limit=10)
    assert encoded.missing == ("a",) and encoded.record_ids == ("b",)


def test_tensor_codec_checks():
    x = np.arange(6, dtype=np.float16).reshape(2, 3)
    assert np.array_equal(from_proto(to_proto(x, "x")), x)
    t = to_proto(x, "x")
    # Within a kind the tensor is cast, as Model.run casts it; across kinds it is refused.
    cast = from_proto(t, name="x", dtype="float32", shape=(2, 3))
    assert cast.dtype == np.float32 and np.array_equal(cast, x.astype(np.float32))
    with pytest.raises(TensorError, match="is float16, the model expects int32"):
        from_proto(t, name="x", dtype="int32", shape=(2, 3))
    t.byte_data = t.byte_data[:-2]
    with pytest.raises(TensorError, match="bytes"):
        from_proto(t)
    bare = pb.Tensor(byte_data=np.zeros(4, np.float32).tobytes())
    assert from_proto(bare, name="x", dtype="float32", shape=(1, 4)).shape == (1, 4)
    with pytest.raises(TensorError, match="no metadata"):
        from_proto(bare)

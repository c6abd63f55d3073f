"""The local gRPC API over a real Unix socket, with stand-in models: methods and status codes."""

from __future__ import annotations

import stat
import threading
import time

import numpy as np
import pytest

from edgekiln.agents import outbox as ob
from edgekiln.agents.capture import CaptureService
from edgekiln.agents.client import AgentCallError, AgentClient
from edgekiln.agents.registry import ModelRegistry
from edgekiln.agents.server import serve
from edgekiln.agents.servicer import AgentServicer


@pytest.fixture
def api(short_dir, fake_loader, fake_clock):
    (short_dir / "models").mkdir()
    for name in ("m.tar.gz", "slow-a.tar.gz", "slow-b.tar.gz", "m-rasp4b.tar.gz"):
        (short_dir / "models" / name).write_bytes(b"stand-in")
    box = ob.Outbox(
        short_dir / "outbox",
        storage_limit_bytes=2 * 1024 * 1024,
        max_records=5,
        full_policy=ob.REJECT_NEW,
        clock=fake_clock,
        durable=False,
    )
    box.open()
    registry = ModelRegistry(
        short_dir / "models", short_dir / "models.json", max_models=3, clock=fake_clock, loader=fake_loader
    )
    capture = CaptureService(box, clock=fake_clock, on_sample=registry.note_sample)
    server = serve(short_dir / "agent.sock", AgentServicer(registry, capture), max_workers=8)
    client = AgentClient(short_dir / "agent.sock", timeout=10)
    client.wait_ready(5)
    yield client, registry, box, short_dir
    client.close()
    server.stop(0).wait(2)
    box.close()


def code_of(fn, *args, **kw) -> str:
    with pytest.raises(AgentCallError) as info:
        fn(*args, **kw)
    return info.value.code


def test_socket_mode_is_0660(api):
    _, _, _, root = api
    mode = stat.S_IMODE((root / "agent.sock").stat().st_mode)
    assert mode == 0o660


def test_model_management_and_status_codes(api):
    client, registry, _, root = api
    model = client.load_model("m.tar.gz", "m1")
    assert model["url"] == str(root / "models" / "m.tar.gz")
    assert model["inputs"] == [{"name": "x", "dtype": "float32", "shape": [1, 4]}]
    assert code_of(client.load_model, "m.tar.gz", "m1") == "ALREADY_EXISTS"
    assert code_of(client.load_model, "nope.tar.gz", "m2") == "NOT_FOUND"
    assert code_of(client.load_model, "m.tar.gz", "bad_name!") == "INVALID_ARGUMENT"
    with pytest.raises(AgentCallError) as info:
        client.load_model("m-rasp4b.tar.gz", "pi")
    assert info.value.code == "FAILED_PRECONDITION" and "aarch64" in info.value.details
    client.load_model("slow-a.tar.gz", "m2")
    client.load_model("slow-b.tar.gz", "m3")
    assert code_of(client.load_model, "m.tar.gz", "m4") == "RESOURCE_EXHAUSTED"
    assert [m["name"] for m in client.list_models()] == ["m1", "m2", "m3"]
    assert client.describe_model("m2")["url"].endswith("slow-a.tar.gz")
    assert code_of(client.describe_model, "zz") == "NOT_FOUND"
    client.unload_model("m3")
    assert code_of(client.unload_model, "m3") == "NOT_FOUND"
    assert [m["name"] for m in registry.saved()] == ["m1", "m2"]  # remembered for a restart


def test_predict_codes(api):
    client, registry, _, _ = api
    client.load_model("m.tar.gz", "m1")
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    (y,) = client.predict("m1", {"x": x})
    assert np.array_equal(y, x * 2)
    (y,) = client.predict("m1", [x])  # metadata names are optional
    assert np.array_equal(y, x * 2)
    assert code_of(client.predict, "nope", [x]) == "NOT_FOUND"
    assert code_of(client.predict, "m1", [x.astype(np.int32)]) == "INVALID_ARGUMENT"  # across kinds
    (y,) = client.predict("m1", [x.astype(np.float64)])  # cast within its kind, as Model.run does
    assert y.dtype == np.float32 and np.array_equal(y, x * 2)
    assert code_of(client.predict, "m1", [np.zeros((2, 4), np.float32)]) == "INVALID_ARGUMENT"
    assert code_of(client.predict, "m1", [x, x]) == "INVALID_ARGUMENT"
    assert code_of(client.predict, "m1", [np.full((1, 4), -999.0, np.float32)]) == "INTERNAL"
    snap = registry.get("m1").metrics.snapshot()
    assert snap["inference_count"] == 3 and snap["error_count"] == 1 and snap["latency_p99_ms"] is not None


def test_predict_on_different_models_runs_concurrently(api):
    client, registry, _, _ = api
    client.load_model("slow-a.tar.gz", "a")
    client.load_model("slow-b.tar.gz", "b")
    x = np.zeros((1, 4), np.float32)
    errors = []

    def call(name):
        try:
            client.predict(name, [x])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    start = time.monotonic()
    threads = [threading.Thread(target=call, args=(n,)) for n in ("a", "b", "a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    elapsed = time.monotonic() - start
    assert not errors
    assert registry.max_running == 2  # both models ran at once; one model never twice at once
    assert elapsed < 4 * 0.3  # serialised it would take 1.2 s


def test_capture_and_status_codes(api, fake_clock):
    client, registry, box, _ = api
    x = np.ones((1, 4), np.float32)
    cid = client.capture(
        "m1",
        capture_id="cap-1",
        input_tensors={"x": x},
        output_tensors={"y": x * 2},
        inputs={"meta": ("JSON", b'{"a": 1}')},
        inference_time=fake_clock.now,
    )
    assert cid == "cap-1" and client.capture_status("cap-1") == "IN_PROGRESS"
    assert registry.snapshots(fake_clock.now)[0].latest_sample_time == fake_clock.now
    assert (
        code_of(client.capture, "m1", capture_id="cap-1", input_tensors=[x], inference_time=fake_clock.now)
        == "ALREADY_EXISTS"
    )
    assert code_of(client.capture, "m1", capture_id="bad id/..", input_tensors=[x]) == "INVALID_ARGUMENT"
    assert code_of(client.capture, "bad_model", capture_id="c2", input_tensors=[x]) == "INVALID_ARGUMENT"
    assert (
        code_of(client.capture, "m1", capture_id="c3", input_tensors=[x], inference_time=fake_clock.now + 3600)
        == "OUT_OF_RANGE"
    )
    assert code_of(client.capture_status, "unknown") == "NOT_FOUND"
    for i in range(4):
        client.capture("m1", capture_id=f"fill-{i}", input_tensors=[x], inference_time=fake_clock.now)
    assert (
        code_of(client.capture, "m1", capture_id="one-too-many", input_tensors=[x], inference_time=fake_clock.now)
        == "RESOURCE_EXHAUSTED"
    )
    (batch,) = box.form_batches(5, flush_after=None)
    box.ack_batch(batch.batch_id)
    assert client.capture_status("cap-1") == "SUCCESS"


def test_shared_memory_is_unimplemented(api):
    from edgekiln.agents import agent_pb2 as pb

    client, _, _, _ = api
    client.load_model("m.tar.gz", "m1")
    request = pb.PredictRequest(
        name="m1", tensors=[pb.Tensor(shared_memory_handle=pb.SharedMemoryHandle(size=16, offset=0, segment_id=1))]
    )
    with pytest.raises(AgentCallError) as info:
        client._call("Predict", request)
    assert info.value.code == "UNIMPLEMENTED"


def test_unreachable_agent_is_one_clear_error(short_dir):
    with AgentClient(short_dir / "none.sock", timeout=1) as client:
        with pytest.raises(AgentCallError) as info:
            client.list_models()
    assert info.value.code == "UNAVAILABLE" and "none.sock" in info.value.one_line()


def test_second_agent_on_the_same_socket_is_refused(api):
    from edgekiln.errors import UserError

    _, registry, box, root = api
    with pytest.raises(UserError, match="another agent"):
        serve(root / "agent.sock", AgentServicer(registry, CaptureService(box)))

"""Property-based tests of the local API: random requests to a real gRPC server on a Unix
socket get a defined answer (OK or a defined status), never UNKNOWN and never a hang."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekiln.agents import agent_pb2 as pb
from edgekiln.agents import outbox as ob
from edgekiln.agents.capture import CaptureService
from edgekiln.agents.registry import ModelRegistry
from edgekiln.agents.server import serve
from edgekiln.agents.servicer import AgentServicer

# What each method may answer; UNKNOWN (an exception that escaped) is never among them.
DEFINED = {
    "OK",
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "FAILED_PRECONDITION",
    "RESOURCE_EXHAUSTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "UNAVAILABLE",
    "INTERNAL",
}
BUDGET = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

names = st.one_of(st.sampled_from(["m", "m.tar.gz", "loaded", "a-b", ""]), st.text(max_size=300))
ints32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
metadata = st.builds(
    pb.TensorMetadata,
    name=names,
    data_type=ints32,
    shape=st.lists(st.integers(min_value=-(2**31), max_value=2**31 - 1), max_size=6),
)
tensors = st.one_of(
    st.builds(pb.Tensor, tensor_metadata=metadata, byte_data=st.binary(max_size=64)),
    st.builds(pb.Tensor, byte_data=st.binary(max_size=64)),
    st.builds(pb.Tensor, shared_memory_handle=st.builds(pb.SharedMemoryHandle, size=st.integers(0, 2**64 - 1))),
    st.just(pb.Tensor()),
)
aux = st.builds(pb.AuxilaryData, name=names, encoding=ints32, byte_data=st.binary(max_size=64))
timestamps = st.builds(pb.Timestamp, seconds=st.integers(-(2**63), 2**63 - 1), nanos=ints32)
requests = st.one_of(
    st.tuples(st.just("LoadModel"), st.builds(pb.LoadModelRequest, url=names, name=names)),
    st.tuples(st.just("UnLoadModel"), st.builds(pb.UnLoadModelRequest, name=names)),
    st.tuples(st.just("DescribeModel"), st.builds(pb.DescribeModelRequest, name=names)),
    st.tuples(st.just("ListModels"), st.just(pb.ListModelsRequest())),
    st.tuples(
        st.just("Predict"),
        st.builds(pb.PredictRequest, name=st.one_of(st.just("loaded"), names), tensors=st.lists(tensors, max_size=3)),
    ),
    st.tuples(
        st.just("CaptureData"),
        st.builds(
            pb.CaptureDataRequest,
            model_name=st.one_of(st.just("m"), names),
            capture_id=st.one_of(st.uuids().map(str), names),
            inference_timestamp=timestamps,
            input_tensors=st.lists(tensors, max_size=2),
            inputs=st.lists(aux, max_size=2),
        ),
    ),
    st.tuples(st.just("GetCaptureDataStatus"), st.builds(pb.GetCaptureDataStatusRequest, capture_id=names)),
)
METHODS = ["LoadModel", "UnLoadModel", "ListModels", "DescribeModel", "Predict", "CaptureData", "GetCaptureDataStatus"]


@pytest.fixture
def channel(short_dir, fake_loader, fake_clock):
    (short_dir / "models").mkdir()
    (short_dir / "models" / "m.tar.gz").write_bytes(b"stand-in")
    box = ob.Outbox(
        short_dir / "outbox", storage_limit_bytes=8 << 20, max_records=10_000, clock=fake_clock, durable=False
    )
    box.open()
    registry = ModelRegistry(
        short_dir / "models", short_dir / "models.json", max_models=4, clock=fake_clock, loader=fake_loader
    )
    registry.load("loaded", "m.tar.gz")
    server = serve(short_dir / "agent.sock", AgentServicer(registry, CaptureService(box, clock=fake_clock)))
    with grpc.insecure_channel(f"unix:{short_dir / 'agent.sock'}") as chan:
        yield chan, box
    server.stop(0).wait(2)
    box.close()


def _call(chan, method: str, payload: bytes) -> str:
    call = chan.unary_unary(f"/AWS.SageMaker.Edge.Agent/{method}", request_serializer=None, response_deserializer=None)
    try:
        call(payload, timeout=10)
    except grpc.RpcError as exc:
        return exc.code().name
    return "OK"


def test_the_service_name_is_the_one_fuzzed():
    assert pb.DESCRIPTOR.services_by_name["Agent"].full_name == "AWS.SageMaker.Edge.Agent"


def _capture(model: str, capture_id: str = "c-1", seconds: int = 0, nanos: int = 0) -> pb.CaptureDataRequest:
    return pb.CaptureDataRequest(
        model_name=model,
        capture_id=capture_id,
        input_tensors=[pb.Tensor(byte_data=b"x")],
        inference_timestamp=pb.Timestamp(seconds=seconds, nanos=nanos),
    )


# The hostile inputs that broke the agent before, kept as a corpus.
HOSTILE = [
    ("CaptureData", _capture("m" * 200)),  # the fleet refuses key segments over 128 characters
    ("CaptureData", _capture("m\n")),  # "$" let a trailing newline through
    ("CaptureData", _capture("m", "c-1\n")),
    ("CaptureData", _capture("m", seconds=-(2**62))),  # no date for the batch to write
    ("CaptureData", _capture("m", nanos=-1)),
    ("LoadModel", pb.LoadModelRequest(url="/etc/passwd", name="m")),  # outside the model directories
    ("LoadModel", pb.LoadModelRequest(url="../../etc/passwd", name="m")),
    ("LoadModel", pb.LoadModelRequest(url="m.tar.gz", name="m" * 200)),
    ("LoadModel", pb.LoadModelRequest(url="m.tar.gz\0", name="m")),
    ("LoadModel", pb.LoadModelRequest(url="a" * 5000, name="m")),  # longer than a file name may be
    (
        "Predict",
        pb.PredictRequest(
            name="loaded",
            tensors=[
                pb.Tensor(  # int64 wrap-around of the size
                    tensor_metadata=pb.TensorMetadata(name="x", data_type=5, shape=[2**31 - 1] * 4), byte_data=b""
                )
            ],
        ),
    ),
]


@BUDGET
@given(request=requests)
def test_random_requests_get_a_defined_status(channel, request):
    chan, box = channel
    method, message = request
    code = _call(chan, method, message.SerializeToString())
    assert code in DEFINED and code != "INTERNAL", (method, message, code)


@pytest.mark.parametrize("method, message", HOSTILE)
def test_hostile_requests_are_refused_with_a_defined_status(channel, method, message):
    chan, box = channel
    assert _call(chan, method, message.SerializeToString()) in {"INVALID_ARGUMENT", "OUT_OF_RANGE"}
    assert box.backlog()["records_ready"] == 0


@BUDGET
@given(method=st.sampled_from(METHODS), payload=st.binary(max_size=200))
def test_bytes_of_any_shape_get_a_defined_status(channel, method, payload):
    # Wrong-typed requests: another message's bytes, or none that parse at all.
    chan, _ = channel
    assert _call(chan, method, payload) in DEFINED - {"INTERNAL"}


@pytest.mark.parametrize("method", METHODS)
def test_bytes_that_are_no_message_are_invalid_argument(channel, method):
    chan, _ = channel
    assert _call(chan, method, b"\xff\xff\xff") == "INVALID_ARGUMENT"


@BUDGET
@given(seconds=st.integers(-(2**63), 2**63 - 1), nanos=ints32)
def test_every_stored_capture_can_be_encoded_for_delivery(channel, fake_clock, seconds, nanos):
    # A timestamp CaptureData accepts must not break the batch that carries it later.
    from edgekiln.agents.capture import encode_batch
    from edgekiln.agents.tensors import to_proto

    chan, box = channel
    request = pb.CaptureDataRequest(
        model_name="m",
        capture_id=f"c{seconds}-{nanos}"[:120].replace("-", "n"),
        input_tensors=[to_proto(np.zeros(2, np.float32), "x")],
    )
    request.inference_timestamp.seconds, request.inference_timestamp.nanos = seconds, nanos
    if _call(chan, "CaptureData", request.SerializeToString()) != "OK":
        return
    for batch in box.form_batches(1, flush_after=0):
        encoded = encode_batch(batch, box.read_record, fleet="f", device="d", embed_limit=1024)
        assert encoded.record_ids == batch.record_ids
        box.ack_batch(batch.batch_id)

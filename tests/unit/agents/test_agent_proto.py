"""The committed generated modules match agent.proto, and the API is Edge Manager's."""

from __future__ import annotations

from pathlib import Path

import edgekiln.agents
from edgekiln.agents import agent_pb2 as pb

PROTO = Path(edgekiln.agents.__file__).parent / "agent.proto"
REPO = PROTO.parents[2]


def test_generated_modules_match_the_proto(tmp_path):
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    out = tmp_path / "set.pb"
    rc = protoc.main(["protoc", f"-I{REPO}", f"--descriptor_set_out={out}", str(PROTO.relative_to(REPO))])
    assert rc == 0
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    for message in fresh.message_type:  # generated code leaves out the derived JSON names
        for f in message.field:
            f.ClearField("json_name")
    committed = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(committed)
    assert committed == fresh, "agent_pb2.py is stale: regenerate it (see the header of agent.proto)"


def test_service_and_messages_are_edge_managers():
    service = pb.DESCRIPTOR.services_by_name["Agent"]
    assert service.full_name == "AWS.SageMaker.Edge.Agent"
    assert {m.name for m in service.methods} == {
        "Predict",
        "LoadModel",
        "UnLoadModel",
        "ListModels",
        "DescribeModel",
        "CaptureData",
        "GetCaptureDataStatus",
        "Bench",
        "TimeKernel",
    }  # edgekiln: Bench and TimeKernel, new methods, leave Edge Manager's untouched
    time_kernel = service.methods_by_name["TimeKernel"]
    assert time_kernel.input_type is pb.TimeKernelRequest.DESCRIPTOR
    assert not time_kernel.client_streaming and not time_kernel.server_streaming
    bench = service.methods_by_name["Bench"]
    assert bench.input_type is bench.output_type is pb.BenchLine.DESCRIPTOR
    assert {f.name: f.number for f in pb.BenchLine.DESCRIPTOR.fields} == {"json": 1}
    fields = {f.name: f.number for f in pb.CaptureDataRequest.DESCRIPTOR.fields}
    assert fields == {
        "model_name": 1,
        "capture_id": 2,
        "inference_timestamp": 3,
        "input_tensors": 4,
        "output_tensors": 5,
        "inputs": 6,
        "outputs": 7,
    }
    assert {f.name: f.number for f in pb.Tensor.DESCRIPTOR.fields} == {
        "tensor_metadata": 1,
        "byte_data": 4,
        "shared_memory_handle": 5,
    }
    assert [pb.DataType.Name(i) for i in range(7)] == [
        "UINT8",
        "INT16",
        "INT32",
        "INT64",
        "FLOAT16",
        "FLOAT32",
        "FLOAT64",
    ]
    assert [pb.CaptureDataStatus.Name(i) for i in range(4)] == ["FAILURE", "SUCCESS", "IN_PROGRESS", "NOT_FOUND"]

"""Serving the agent's local API: a gRPC server on a Unix socket."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgekiln.errors import UserError

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def serve(socket_path: Path, servicer: Any, *, max_workers: int = 8) -> Any:
    """Start a gRPC server for ``servicer`` on a Unix socket with mode 0660."""
    import socket as socketlib
    from concurrent import futures

    import grpc

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
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="agent-rpc"),
        handlers=[_handlers(servicer)],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
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


def _handlers(servicer: Any) -> Any:
    """The Agent service's handlers, from the proto's descriptor.

    Unary requests arrive as bytes and are parsed here, so that bytes that are not the
    method's message (another message, or none at all) answer INVALID_ARGUMENT; grpc's own
    deserialisation would answer INTERNAL.
    """
    import grpc

    from edgekiln.agents import agent_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["Agent"]
    handlers = {}
    for method in service.methods:
        request, response = getattr(pb, method.input_type.name), getattr(pb, method.output_type.name)
        if method.client_streaming or method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                getattr(servicer, method.name),
                request_deserializer=request.FromString,
                response_serializer=response.SerializeToString,
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _parsing(getattr(servicer, method.name), request), response_serializer=response.SerializeToString
            )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def _parsing(method: Any, request_type: Any) -> Any:
    def handle(raw: bytes, context: Any) -> Any:
        from google.protobuf.message import DecodeError

        from edgekiln.agents.servicer import abort

        try:
            request = request_type.FromString(raw)
        except (DecodeError, ValueError):
            abort(context, "INVALID_ARGUMENT", f"the request is not a valid {request_type.DESCRIPTOR.name}")
        return method(request, context)

    return handle

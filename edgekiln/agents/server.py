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

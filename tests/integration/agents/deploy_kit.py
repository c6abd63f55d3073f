"""Real parts for the deployment tests: tiny ONNX models compiled with the onnxruntime
backend, broken variants of them, signed packages, a loopback fleet stub (deployments JSON,
packages with Range, heartbeats), a proxy that cuts connections, and agent processes."""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
W_SHAPE = (8, 4)


# -- models -------------------------------------------------------------------------------
def _onnx(path: Path, scale: float) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])
    w = numpy_helper.from_array((np.arange(32, dtype=np.float32).reshape(W_SHAPE) / 32) * scale, "w")
    inits, nodes = [w], [helper.make_node("MatMul", ["input", "w"], ["output"])]
    graph = helper.make_graph(nodes, "tiny", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def compile_tiny(root: Path, name: str, scale: float) -> Path:
    from edgekiln.compile.api import CompileOptions, compile_model

    src = _onnx(root / f"{name}.onnx", scale)
    options = CompileOptions(backend="onnxruntime")
    return compile_model(str(src), "x86_64", root / f"{name}.tar.gz", options=options).path


def _graph_bytes(kind: str) -> bytes:
    """A model.onnx with the good one's input and output that is broken in ``kind``'s way."""
    from onnx import TensorProto, helper, numpy_helper

    if kind == "garbage":
        return b"this is not an ONNX model" * 8
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])
    w = numpy_helper.from_array(np.ones(W_SHAPE, np.float32), "w")
    if kind == "nan":  # sqrt of a negative number
        inits = [w, numpy_helper.from_array(np.array(-1.0, np.float32), "neg")]
        nodes = [
            helper.make_node("MatMul", ["input", "w"], ["m"]),
            helper.make_node("Abs", ["m"], ["a"]),
            helper.make_node("Mul", ["a", "neg"], ["n"]),
            helper.make_node("Sqrt", ["n"], ["q"]),
            helper.make_node("Add", ["q", "q"], ["output"]),
        ]
    else:  # "slow": a [256, 1024] activation through 6 matmuls of [1024, 1024]
        big = numpy_helper.from_array(np.full((1024, 1024), 1e-3, np.float32), "big")
        up = numpy_helper.from_array(np.full((8, 1024), 1e-3, np.float32), "up")
        down = numpy_helper.from_array(np.full((1024, 4), 1e-3, np.float32), "down")
        reps = numpy_helper.from_array(np.array([256, 1], np.int64), "reps")
        inits = [big, up, down, reps]
        nodes = [helper.make_node("MatMul", ["input", "up"], ["h0"]), helper.make_node("Tile", ["h0", "reps"], ["t0"])]
        for i in range(6):
            nodes.append(helper.make_node("MatMul", [f"t{i}", "big"], [f"t{i + 1}"]))
        nodes += [
            helper.make_node("ReduceMean", ["t6"], ["r"], keepdims=1, axes=[0]),
            helper.make_node("MatMul", ["r", "down"], ["output"]),
        ]
    graph = helper.make_graph(nodes, kind, [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def broken_artifact(good: Path, kind: str, out: Path) -> Path:
    """``good`` with its model.onnx replaced (hashes consistent): kind is garbage | nan | slow."""
    from edgekiln.artifact import file_entry, pack, unpack

    work = out.with_suffix(".d")
    manifest = unpack(good, work)
    (work / "model.onnx").write_bytes(_graph_bytes(kind))
    files = tuple(file_entry(work, f.path, f.role) for f in manifest.files)
    return pack(dataclasses.replace(manifest, files=files), work, out)


def padded_artifact(good: Path, out: Path, lines: int = 40_000) -> Path:
    """``good`` with a large labels file of random names (~350 kB packed): a package big
    enough to cut and kill many times mid-download."""
    from edgekiln.artifact import file_entry, pack, unpack

    work = out.with_suffix(".d")
    manifest = unpack(good, work)
    rng = np.random.default_rng(0)
    (work / "labels.txt").write_text("\n".join(rng.bytes(8).hex() for _ in range(lines)) + "\n")
    files = (*manifest.files, file_entry(work, "labels.txt", "labels"))
    return pack(dataclasses.replace(manifest, files=files, labels="labels.txt"), work, out)


# -- the fleet stub -----------------------------------------------------------------------
class FleetStub:
    """GET /v1/agent/deployments, GET /pkg/NAME (Range), POST /v1/agent/heartbeats."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.deployments: list[dict[str, Any]] = []
        self.heartbeats: list[dict[str, Any]] = []
        self.results: dict[str, dict[str, Any]] = {}
        self.ranges: list[str] = []
        self.refuse_heartbeats = False
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.startswith("/v1/agent/deployments"):
                    return self._json({"deployments": stub.deployments})
                name = self.path.removeprefix("/pkg/")
                path = stub.root / name
                if not re.fullmatch(r"[\w.-]+", name) or not path.is_file():
                    return self._json({"detail": "no such package"}, 404)
                data = path.read_bytes()
                start, header = 0, self.headers.get("Range")
                if header:
                    stub.ranges.append(header)
                    start = int(re.fullmatch(r"bytes=(\d+)-", header).group(1))
                self.send_response(206 if header else 200)
                if header:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start:])

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if stub.refuse_heartbeats:
                    return self._json({"detail": "offline"}, 503)
                for beat in body.get("heartbeats", []):
                    stub.heartbeats.append(beat)
                    for result in beat.get("deployment_results") or []:
                        stub.results[result["deployment_id"]] = result
                self._json({"accepted": len(body.get("heartbeats", []))})

            def _json(self, value: Any, status: int = 200) -> None:
                data = json.dumps(value).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def publish(self, package: Path, deployment_id: str, handle: str, version: int, **extra: Any) -> dict[str, Any]:
        from edgekiln.artifact.package import sha256_file

        target = self.root / package.name
        if target != package:
            target.write_bytes(package.read_bytes())
        entry = {
            "deployment_id": deployment_id,
            "plan": "plan",
            "stage": "stage",
            "model_handle": handle,
            "model_version": version,
            "package_url": extra.pop("base", self.url) + f"/pkg/{package.name}",
            "package_sha256": sha256_file(target),
            "package_size": target.stat().st_size,
            "failure_handling": "ROLLBACK_ON_FAILURE",
            "latency_budget_ms": None,
            **extra,
        }
        self.deployments = [entry]
        return entry

    def wait_result(self, deployment_id: str, status: str | None = None, timeout: float = 20.0) -> dict[str, Any]:
        """The result a heartbeat brought for ``deployment_id`` once it has ``status`` (by
        default: any status but DEPLOYING); an AssertionError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.results.get(deployment_id)
            if result is not None and (result["status"] == status if status else result["status"] != "DEPLOYING"):
                return result
            time.sleep(0.1)
        raise AssertionError(f"no {status or 'final'} result for {deployment_id}: {self.results.get(deployment_id)}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class CuttingProxy:
    """A TCP proxy in front of ``upstream`` that closes the n-th connection after
    ``cuts[n]`` bytes of the answer; later connections pass whole. Counts what it relays."""

    def __init__(self, upstream: str, cuts: list[int]) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.cuts = list(cuts)
        self.relayed = 0
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            limit = self.cuts[self.connections] if self.connections < len(self.cuts) else None
            self.connections += 1
            threading.Thread(target=self._relay, args=(client, limit), daemon=True).start()

    def _relay(self, client: socket.socket, limit: int | None) -> None:
        upstream = socket.create_connection(self.upstream)
        threading.Thread(target=_pump, args=(client, upstream), daemon=True).start()
        sent = 0
        try:
            while limit is None or sent < limit:
                data = upstream.recv(16384 if limit is None else min(16384, limit - sent))
                if not data:
                    break
                client.sendall(data)
                sent += len(data)
                self.relayed += len(data)
        except OSError:
            pass
        finally:
            for s in (client, upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self.sock.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(16384):
            dst.sendall(data)
    except OSError:
        pass


# -- agent processes ----------------------------------------------------------------------
class AgentProcess:
    """``edgekiln agent --config`` as a child process that a test may kill -9 and restart."""

    def __init__(self, root: Path, trusted: list[Path], endpoint: str | None = None, **deploy: Any) -> None:
        from edgekiln.agents.config import dump_toml

        self.root = root
        (root / "models").mkdir(parents=True, exist_ok=True)
        data: dict[str, Any] = {
            "device": {"name": "dev-1", "fleet": "plant"},
            "fleet": {"heartbeat_period_seconds": 0.3, "retry_max_seconds": 0.5, "request_timeout_seconds": 5},
            "agent": {"socket": str(root / "a.sock"), "model_dir": str(root / "models"), "state_dir": str(root / "s")},
            "capture": {"destination": "Disk", "disk_path": str(root / "captures"), "sync_writes": False},
            "deploy": {"trusted_keys": [str(p) for p in trusted], "health_runs": 5, "poll_period_seconds": 0.3},
        }
        if endpoint:
            (root / "token").write_text("device-token")
            data["fleet"].update(endpoint=endpoint, token_file=str(root / "token"))
        data["deploy"].update(deploy)
        if not trusted:  # an agent without keys: the key is left out, as a config without it
            del data["deploy"]["trusted_keys"]
        self.config = root / "agent.toml"
        self.config.write_text(dump_toml(data))
        self.proc: subprocess.Popen | None = None

    def start(self, kill_at: str | None = None) -> AgentProcess:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("EDGEKILN_DEPLOY_KILL_AT", None)
        if kill_at:
            env["EDGEKILN_DEPLOY_KILL_AT"] = kill_at
        log = open(self.root / "agent.log", "ab")
        cmd = [sys.executable, "-m", "edgekiln.cli.main", "agent", "--config", str(self.config), "--log-level", "info"]
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not (self.root / "a.sock").exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}: {self.log()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"agent not ready: {self.log()[-2000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc:
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        path = self.root / "agent.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def records(self) -> dict[str, dict[str, Any]]:
        path = self.root / "s" / "deploy" / "deployments.json"
        return json.loads(path.read_text())["deployments"] if path.exists() else {}

    def record(self, deployment_id: str) -> dict[str, Any]:
        return self.records().get(deployment_id, {})

    def wait_final(self, deployment_id: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.record(deployment_id)
            if record.get("status") in ("SUCCEEDED", "FAILED", "ROLLED_BACK", "FAILED_UNABLE_TO_ROLLBACK"):
                return record
            if self.proc.poll() is not None:
                return {"exited": self.proc.returncode, **record}
            time.sleep(0.1)
        raise AssertionError(f"{deployment_id} not final after {timeout} s: {record} {self.log()[-3000:]}")

    def predict(self, handle: str = "tiny", timeout: float = 30.0) -> np.ndarray:
        from edgekiln.agents.client import AgentClient

        with AgentClient(self.root / "a.sock", timeout=10) as client:
            client.wait_ready(timeout)
            return client.predict(handle, [np.ones((1, 8), np.float32)])[0]

    def serving_scale(self, handle: str = "tiny") -> float:
        """Which version serves: the scale of the weights (output / output of scale 1)."""
        expected = np.ones((1, 8), np.float32) @ (np.arange(32, dtype=np.float32).reshape(W_SHAPE) / 32)
        return float(np.round(self.predict(handle)[0, 0] / expected[0, 0], 3))


@contextlib.contextmanager
def fleet_and_agent(
    deploy_parts: dict[str, Any], short_dir: Path, tmp_path: Path
) -> Iterator[tuple[FleetStub, AgentProcess]]:
    """A fleet stub and an agent (not started) that trusts the release key and polls the
    stub; the agent is stopped and the stub closed when the block ends."""
    fleet = FleetStub(tmp_path)
    agent = AgentProcess(short_dir / "dev", [deploy_parts["pub"]], endpoint=fleet.url)
    try:
        yield fleet, agent
    finally:
        agent.stop()
        fleet.close()


def install_first(fleet: FleetStub, agent: AgentProcess, package: Path, deployment_id: str, version: int) -> None:
    """Deploy ``package`` as tiny v``version`` to a running agent and wait until it serves."""
    fleet.publish(package, deployment_id, "tiny", version)
    assert agent.wait_final(deployment_id)["status"] == "SUCCEEDED"


def random_cuts(size: int, count: int, seed: int) -> list[int]:
    """``count`` connection lengths in bytes that together stay below ``size``: each cut
    happens after a random share of what is left."""
    rng = random.Random(seed)
    return [rng.randint(200, max(400, size // (count + 1))) for _ in range(count)]

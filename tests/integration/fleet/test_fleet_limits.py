"""Size caps in a real fleet service process (uvicorn): oversize bodies are refused as they
arrive, and neither the process nor its database grows."""

from __future__ import annotations

import http.client
import os

import pytest

from devtools.servers import FleetServer

MiB = 1 << 20


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))


def _db_bytes(root) -> int:
    return sum(os.path.getsize(root / n) for n in os.listdir(root) if n.startswith("fleet.db"))


def _send(port: int, method: str, path: str, headers: dict[str, str], chunks, *, chunked: bool) -> int:
    """Send the body chunk by chunk; the server may answer and close before the end."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.putrequest(method, path)
    for k, v in headers.items():
        conn.putheader(k, v)
    if chunked:
        conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    try:
        for chunk in chunks:
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
        if chunked:
            conn.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # it answered already
    try:
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.fixture
def fleet(tmp_path):
    server = FleetServer(tmp_path / "fleet", extra_args=("--max-object-bytes", str(MiB))).start()
    yield server
    server.stop()


@pytest.mark.parametrize("chunked", [False, True])
def test_a_64_mb_heartbeat_is_refused_and_nothing_grows(fleet, chunked):
    token = fleet.register("plant", "cam-1")
    fleet.call("POST", "/v1/agent/heartbeats", {"heartbeats": [{"heartbeat_id": "h0", "timestamp": 1}]}, token=token)
    db, rss = _db_bytes(fleet.data_dir), _rss(fleet.process.pid)
    head = b'{"heartbeats": [{"heartbeat_id": "h1", "timestamp": 1, "agent_version": "'
    body = [head] + [b"x" * MiB] * 64 + [b'"}]}']
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if not chunked:
        headers["Content-Length"] = str(sum(map(len, body)))
    assert _send(fleet.port, "POST", "/v1/agent/heartbeats", headers, body, chunked=chunked) == 413
    assert _db_bytes(fleet.data_dir) == db
    assert _rss(fleet.process.pid) - rss < 32 * MiB
    assert fleet.call("GET", "/v1/devices/plant/cam-1/heartbeats")["heartbeat_ids"] == ["h0"]


def test_an_oversize_upload_is_refused_unbuffered_and_not_stored(fleet):
    token = fleet.register("plant", "cam-1")
    urls = fleet.call("POST", "/v1/agent/uploads", {"keys": ["m/a.bin", "m/b.bin"]}, token=token)["urls"]
    rss = _rss(fleet.process.pid)
    for key, chunked in (("m/a.bin", True), ("m/b.bin", False)):
        path = urls[key].split(str(fleet.port), 1)[1]
        body = [b"\0" * MiB] * 64
        headers = {} if chunked else {"Content-Length": str(64 * MiB)}
        assert _send(fleet.port, "PUT", path, headers, body, chunked=chunked) == 413, key
    assert _rss(fleet.process.pid) - rss < 32 * MiB
    stored = [p for p in (fleet.data_dir / "objects").rglob("*") if p.is_file()]
    assert stored == []
    path = urls["m/a.bin"].split(str(fleet.port), 1)[1]
    assert _send(fleet.port, "PUT", path, {"Content-Length": str(MiB)}, [b"\1" * MiB], chunked=False) == 200
    assert (fleet.data_dir / "objects" / "plant" / "cam-1" / "m" / "a.bin").stat().st_size == MiB
    assert set(fleet.call("GET", "/v1/health")) == {"status", "version"}
    assert oct((fleet.data_dir / "fleet.db").stat().st_mode & 0o777) == "0o600"
    assert oct((fleet.data_dir / "objects" / "plant").stat().st_mode & 0o777) == "0o750"

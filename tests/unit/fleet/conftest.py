"""The fleet service in process (FastAPI's TestClient, local object store, SQLite)."""

from __future__ import annotations

import time
import warnings

import pytest

with warnings.catch_warnings():  # newer Starlette prefers httpx2 for its test client; either works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from edgekiln.fleet.app import FleetOptions, create_app
from edgekiln.fleet.store import FleetStore

ADMIN = "admin-token-0123456789"
BASE = "http://127.0.0.1:9"


class FleetApi:
    """A TestClient with the calls the tests make, and the service's files."""

    def __init__(self, client: TestClient, root, clock: list[float]) -> None:
        self.client = client
        self.root = root
        self.clock = clock

    def admin(self, method: str, path: str, **kw):
        return self.device(ADMIN, method, path, **kw)

    def device(self, token: str, method: str, path: str, *, headers=None, **kw):
        return self.client.request(method, path, headers={"Authorization": f"Bearer {token}", **(headers or {})}, **kw)

    def register(self, fleet: str, device: str, **extra) -> str:
        answer = self.admin("POST", "/v1/devices", json={"fleet": fleet, "device": device, **extra})
        assert answer.status_code == 201, answer.text
        return answer.json()["token"]

    def sign_in(self, credential: str = ADMIN, headers=None):
        """Sign in to the dashboard as its form does (same origin unless ``headers`` say
        otherwise); the answer, not followed."""
        return self.client.post(
            "/dashboard/signin",
            content=f"credential={credential}",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                **({"Origin": BASE} if headers is None else headers),
            },
            follow_redirects=False,
        )

    def heartbeat(self, token: str, *heartbeats):
        return self.device(token, "POST", "/v1/agent/heartbeats", json={"heartbeats": list(heartbeats)})

    def rows(self, table: str) -> int:
        import sqlite3

        with sqlite3.connect(self.root / "f.db") as conn:
            return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def heartbeat(hid: str = "h1", ts: float = 1_800_000_000.0, **fields):
    return {
        "heartbeat_id": hid,
        "timestamp": ts,
        "device_name": "d1",
        "device_fleet_name": "f",
        "agent_version": "1",
        "agent_metrics": [],
        "models": [],
        "faults": [],
        **fields,
    }


@pytest.fixture
def make_fleet(tmp_path):
    """make_fleet(**options) -> a FleetApi on a fresh service; the clock is settable."""
    clients = []

    def make(**overrides) -> FleetApi:
        clock = [time.time()]
        options = FleetOptions(
            **{
                "database_url": f"sqlite:///{tmp_path / 'f.db'}",
                "admin_token": ADMIN,
                "object_store": "local",
                "objects_dir": tmp_path / "objects",
                "presign_seconds": 60,
                **overrides,
            }
        )
        client = TestClient(create_app(options, clock=lambda: clock[0]), base_url=BASE)
        client.__enter__()
        clients.append(client)
        return FleetApi(client, tmp_path, clock)

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def store(tmp_path):
    """A FleetStore on a fresh SQLite file, its schema made."""
    s = FleetStore(f"sqlite:///{tmp_path / 'fleet.db'}")
    s.create_schema()
    yield s
    s.close()


@pytest.fixture
def api(make_fleet) -> FleetApi:
    return make_fleet()


@pytest.fixture
def hb():
    """hb(id, timestamp, **fields) -> a heartbeat of f/d1 as the agent sends it."""
    return heartbeat


@pytest.fixture
def served(tmp_path, monkeypatch):
    """The fleet service under uvicorn in a thread of this process; the CLI pointed at it
    through the environment.  Its URL."""
    import socket
    import threading

    import uvicorn

    options = FleetOptions(
        database_url=f"sqlite:///{tmp_path / 'f.db'}",
        admin_token=ADMIN,
        object_store="local",
        objects_dir=tmp_path / "objects",
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(options), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    monkeypatch.setenv("EDGEKILN_FLEET_ADMIN_TOKEN", ADMIN)
    monkeypatch.setenv("EDGEKILN_FLEET_ENDPOINT", f"http://127.0.0.1:{port}")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)

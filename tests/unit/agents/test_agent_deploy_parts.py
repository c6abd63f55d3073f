"""The deployment pieces on their own: config, fleet entries, durable stores, slots and
pointers, the health gate, the Range downloader (against a loopback server), the kill hook."""

from __future__ import annotations

import http.server
import json
import os
import threading
import time

import numpy as np
import pytest

from edgekiln.agents.deploy import faults
from edgekiln.agents.deploy.download import DownloadInterrupted, Transfer, download
from edgekiln.agents.deploy.health import Reference, check_health
from edgekiln.agents.deploy.slots import Slots
from edgekiln.agents.deploy.spec import from_fleet, heartbeat_result
from edgekiln.agents.deploy.store import DeploymentLog, VersionFloor
from edgekiln.artifact.package import sha256_file
from edgekiln.errors import IntegrityError, UserError
from tests.unit.agents.fakes import fake_manifest

SHA = "a" * 64


def _entry(**changes):
    entry = {
        "deployment_id": "plan:stage:tiny:3",
        "model_handle": "tiny",
        "model_version": 3,
        "package_url": "http://127.0.0.1:1/p.pkg",
        "package_sha256": SHA,
        "package_size": 1000,
        "failure_handling": "DO_NOTHING",
        "latency_budget_ms": 25,
    }
    return {**entry, **changes}


def test_config_deploy_section(agent_config, short_dir):
    config = agent_config(deploy={"trusted_keys": ["a.pub", "b.pub"], "latency_budget_ms": 10})
    assert config.deploy.trusted_keys == (short_dir / "a.pub", short_dir / "b.pub")
    slots, staging, inbox = config.deploy.dirs(config.agent.state_dir)
    assert slots == config.agent.state_dir / "deploy" / "slots" and inbox.name == "inbox" and staging.name == "staging"
    assert agent_config().deploy.trusted_keys == ()
    for bad, words in (
        ({"health_runs": 0}, "deploy.health_runs"),
        ({"local_failure_handling": "RETRY"}, "deploy.local_failure_handling"),
        ({"latency_budget_ms": -1}, "deploy.latency_budget_ms"),
        ({"trusted_key": ["x"]}, "unknown key deploy.trusted_key"),
    ):
        with pytest.raises(UserError, match=words):
            agent_config(deploy=bad)


def test_fleet_entries_are_validated():
    spec = from_fleet(_entry(), max_size=10_000)
    assert (spec.handle, spec.version, spec.failure_handling, spec.latency_budget_ms) == ("tiny", 3, "DO_NOTHING", 25.0)
    for change, words in (
        ({"model_handle": "../x"}, "model_handle"),
        ({"model_version": 0}, "model_version"),
        ({"package_url": "file:///etc/passwd"}, "package_url"),
        ({"package_sha256": "A" * 64}, "package_sha256"),
        ({"package_size": 10_001}, "package_size"),
        ({"failure_handling": "x"}, "failure_handling"),
        ({"latency_budget_ms": float("nan")}, "latency_budget_ms"),
        ({"deployment_id": "x" * 257}, "deployment_id"),
    ):
        with pytest.raises(UserError, match=words):
            from_fleet(_entry(**change), max_size=10_000)


def test_stores_survive_reopening_and_track_what_was_reported(tmp_path):
    floor = VersionFloor(tmp_path / "versions.json")
    floor.raise_to("tiny", 3)
    floor.raise_to("tiny", 2)  # never lowered
    assert VersionFloor(tmp_path / "versions.json").get("tiny") == 3
    assert VersionFloor(tmp_path / "versions.json").get("other") == 0
    log = DeploymentLog(tmp_path / "log.json")
    log.update("d1", spec={"handle": "tiny", "version": 3}, status="DEPLOYING", updated_at=1.0)
    sent = [heartbeat_result(r) for r in log.unreported()]
    assert sent[0]["status"] == "DEPLOYING" and sent[0]["state"] == "UNDEPLOYED" and sent[0]["model_version"] == 3
    log.update("d1", status="ROLLED_BACK", reason="health", rollback_seconds=0.2, updated_at=2.0)
    log.mark_reported(sent)  # an older result was accepted: the new one is still owed
    assert [r["status"] for r in DeploymentLog(tmp_path / "log.json").unreported()] == ["ROLLED_BACK"]
    log.mark_reported([heartbeat_result(r) for r in log.unreported()])
    assert DeploymentLog(tmp_path / "log.json").unreported() == []
    (tmp_path / "bad.json").write_text("[1]")
    with pytest.raises(ValueError):
        DeploymentLog(tmp_path / "bad.json")


def test_slots_publish_whole_and_pointers_move_atomically(tmp_path):
    import dataclasses

    from edgekiln.artifact import FileEntry, pack

    src = tmp_path / "src"
    src.mkdir()
    (src / "model.bin").write_bytes(b"x" * 100)
    manifest = dataclasses.replace(
        fake_manifest(), files=(FileEntry("model.bin", 100, sha256_file(src / "model.bin"), "weights"),)
    )
    artifact = pack(manifest, src, tmp_path / "a.tar.gz")
    slots = Slots(tmp_path / "slots")
    slot = slots.install("tiny", 2, artifact)
    assert (slot / "model.bin").read_bytes() == b"x" * 100 and (slot / "manifest.json").is_file()
    assert slots.pointer("tiny", "current") is None
    slots.set_pointer("tiny", "current", 2)
    assert slots.pointer("tiny", "current") == 2 and os.readlink(slot.parent / "current") == "v2"
    (slot.parent / ".v3.partial").mkdir()  # a crash mid-extraction
    slots.install("tiny", 1, artifact)
    slots.clean("tiny", keep=set())
    assert sorted(p.name for p in slot.parent.iterdir()) == ["current", "v2"]
    slots.set_pointer("tiny", "current", None)
    assert slots.pointer("tiny", "current") is None
    with pytest.raises(UserError):
        slots.slot("../etc", 1)
    damaged = tmp_path / "d.tar.gz"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 1
    damaged.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        slots.install("tiny", 5, damaged)
    assert not (slot.parent / "v5").exists() and not (slot.parent / ".v5.partial").exists()


class _Model:
    def __init__(self, fn, delay=0.0):
        self.manifest, self.fn, self.delay = fake_manifest(), fn, delay

    def run(self, arrays):
        time.sleep(self.delay)
        return [self.fn(arrays[0])]


def test_health_gate():
    ok = check_health(_Model(lambda x: x * 2), samples=3, runs=5, budget_ms=50.0)
    assert ok.ok and ok.p50_ms < 50
    nan = check_health(_Model(lambda x: np.full_like(x, np.nan)), samples=3, runs=5, budget_ms=None)
    assert not nan.ok and "NaN or Inf" in nan.reason
    slow = check_health(_Model(lambda x: x, delay=0.02), samples=1, runs=3, budget_ms=2.0)
    assert not slow.ok and "over the budget of 2 ms" in slow.reason and slow.p50_ms >= 20
    from edgekiln.execute.inputs import make_inputs

    inputs = make_inputs(fake_manifest().inputs, 2, seed=5)
    recorded = Reference(seed=5, outputs=[[s[0] * 2] for s in inputs], tolerance_abs=1e-5)
    assert check_health(_Model(lambda x: x * 2), samples=2, runs=2, budget_ms=None, reference=recorded).ok
    off = check_health(_Model(lambda x: x * 2.1), samples=2, runs=2, budget_ms=None, reference=recorded)
    assert not off.ok and "differ from the recorded ones" in off.reason


@pytest.fixture
def range_server(tmp_path):
    """A loopback server for /f that honours Range and cuts the first answers short."""
    data = np.random.default_rng(1).bytes(300_000)
    state = {"cuts": [50_000, 1_000, 120_000], "ranges": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args):
            pass

        def do_GET(self):
            start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
            state["ranges"].append(start)
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            cut = state["cuts"].pop(0) if state["cuts"] else None
            self.wfile.write(data[start : start + cut] if cut else data[start:])

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/f", data, state
    server.shutdown()


def test_download_resumes_with_range_after_cuts(range_server, tmp_path):
    import hashlib

    url, data, state = range_server
    part, transfer = tmp_path / "p.pkg.part", Transfer()
    digest = hashlib.sha256(data).hexdigest()
    for _ in range(3):
        with pytest.raises(DownloadInterrupted, match="cut"):
            download(url, part, len(data), digest, transfer=transfer)
    done = download(url, part, len(data), digest, transfer=transfer)
    assert done.read_bytes() == data and not part.exists()
    assert state["ranges"] == [0, 50_000, 51_000, 171_000]
    assert transfer.received == len(data) and transfer.requests == 4
    with pytest.raises(IntegrityError, match="sha256"):
        download(url, tmp_path / "q.pkg.part", len(data), "0" * 64)
    assert not (tmp_path / "q.pkg.part").exists() and not (tmp_path / "q.pkg").exists()


def test_kill_hook_is_inert_unless_set(monkeypatch):
    monkeypatch.delenv(faults.KILL_ENV, raising=False)
    faults.checkpoint("health")  # no environment: nothing happens
    monkeypatch.setenv(faults.KILL_ENV, "health:1000000,bogus:1")
    assert faults._targets() == {"health": 1_000_000}
    faults.checkpoint("health")
    assert json.dumps(faults.STEPS) == '["download", "verify", "unpack", "switch", "health", "commit"]'

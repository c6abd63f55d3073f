"""Size caps: bodies refused before parsing, heartbeat counts, streamed local uploads."""

from __future__ import annotations

import os

MiB = 1 << 20


def _db_size(api) -> int:
    return sum(os.path.getsize(api.root / n) for n in os.listdir(api.root) if n.startswith("f.db"))


def test_a_64_mb_heartbeat_gets_413_and_the_database_does_not_grow(api, hb):
    token = api.register("f", "d1")
    assert api.heartbeat(token, hb("h0")).status_code == 200
    before, rows = _db_size(api), api.rows("heartbeats")
    huge = b'{"heartbeats": [{"heartbeat_id": "h1", "timestamp": 1, "agent_version": "' + b"x" * (64 * MiB) + b'"}]}'
    answer = api.device(
        token, "POST", "/v1/agent/heartbeats", content=huge, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 413 and "limit" in answer.json()["detail"]
    assert _db_size(api) == before and api.rows("heartbeats") == rows


def test_a_chunked_body_is_cut_off_at_the_cap(make_fleet, hb):
    api = make_fleet(max_body_bytes=64 * 1024)
    token = api.register("f", "d1")

    def chunks():  # no Content-Length: the cap is enforced as the body is read
        for _ in range(1000):
            yield b" " * 4096

    answer = api.device(
        token, "POST", "/v1/agent/heartbeats", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 413
    assert api.rows("heartbeats") == 0


def test_heartbeat_counts_per_request_are_capped(make_fleet, hb):
    api = make_fleet(
        max_heartbeats_per_request=3,
        max_metrics_per_heartbeat=4,
        max_models_per_heartbeat=2,
        max_faults_per_heartbeat=2,
    )
    token = api.register("f", "d1")
    assert api.heartbeat(token, *[hb(f"h{i}") for i in range(4)]).status_code == 413
    metric = {"metric_name": "m", "value": 1}
    assert api.heartbeat(token, hb("a", agent_metrics=[metric] * 5)).status_code == 413
    models = [{"model_name": f"m{i}", "model_metrics": [metric] * 2} for i in range(2)]
    assert api.heartbeat(token, hb("b", agent_metrics=[metric], models=models)).status_code == 413  # 5 in all
    assert api.heartbeat(token, hb("c", models=[{"model_name": f"m{i}"} for i in range(3)])).status_code == 413
    assert api.heartbeat(token, hb("d", faults=[{"kind": "x"}] * 3)).status_code == 413
    assert api.rows("heartbeats") == 0
    assert api.heartbeat(token, *[hb(f"h{i}", agent_metrics=[metric] * 4) for i in range(3)]).json() == {
        "accepted": 3,
        "duplicates": 0,
    }


def test_an_oversize_local_upload_is_refused_and_not_stored(make_fleet):
    api = make_fleet(max_object_bytes=1 * MiB)
    token = api.register("f", "d1")
    urls = api.device(token, "POST", "/v1/agent/uploads", json={"keys": ["m/a.bin", "m/b.bin", "m/c.bin"]}).json()
    path = {k: u.split("127.0.0.1:9", 1)[1] for k, u in urls["urls"].items()}
    # Declared too large: refused before a byte is read.
    assert api.client.put(path["m/a.bin"], content=b"\0" * (MiB + 1)).status_code == 413

    # Streamed without a length: written chunk by chunk, cut off at the cap, nothing kept.
    def chunks():
        for _ in range(64):
            yield b"\0" * 65536

    assert api.client.put(path["m/b.bin"], content=chunks()).status_code == 413
    objects = api.root / "objects"
    assert [p.name for p in objects.rglob("*") if p.is_file()] == []
    # At the cap exactly, it is stored.
    assert api.client.put(path["m/c.bin"], content=b"\1" * MiB).status_code == 200
    assert (objects / "f" / "d1" / "m" / "c.bin").stat().st_size == MiB


def test_local_put_stream_stops_reading_at_the_cap(tmp_path):
    import asyncio

    import pytest

    from edgekiln.fleet.objects import LocalObjects, TooLarge

    objects = LocalObjects(tmp_path / "objects", b"k" * 32)
    objects.ensure_ready()
    pulled = []

    async def chunks():
        for _ in range(1000):
            pulled.append(1)
            yield b"\0" * 65536

    with pytest.raises(TooLarge, match="over the 1048576-byte limit"):
        asyncio.run(objects.put_stream("f/d1/m/x.bin", chunks(), MiB))
    assert len(pulled) == 17  # 16 chunks fill the cap, the 17th crosses it: the rest is never read
    assert [p for p in (tmp_path / "objects").rglob("*") if p.is_file()] == []

"""Heartbeat roll-up, the overview's rows and the worker options, on SQLite."""

from __future__ import annotations

import logging
import time

import pytest

from edgekiln.errors import UserError
from edgekiln.fleet import rollup, serving
from edgekiln.fleet.options import FleetOptions
from tests.unit.fleet.rollup_cases import HOUR, NOW, beat, check_concurrent_rollup, check_rollup


def test_rollup_folds_old_heartbeats_into_minutes(store):
    check_rollup(store, "f")


def test_concurrent_rollups_count_each_heartbeat_once(store):
    check_concurrent_rollup(store, "f")


def test_rollup_keeps_heartbeats_inside_the_window(store):
    device = store.authenticate(store.register_device("f", "a", now=NOW))
    store.add_heartbeats(device, [beat(1, 1), beat(2, 2)], NOW)
    result = rollup.roll_up(store, NOW + HOUR - 1, raw_retention_seconds=HOUR)
    assert result == rollup.RollupResult(0, 0, 0)
    assert len(store.heartbeat_ids("f", "a")) == 2


def test_overview_rows_and_filters(store):
    a = store.authenticate(store.register_device("f", "a", now=NOW))
    b = store.authenticate(store.register_device("f", "b", now=NOW))
    store.register_device("g", "c", now=NOW)
    store.add_heartbeats(a, [beat(1, 1, version="3", agent="1.2.0")], NOW)
    store.add_heartbeats(b, [beat(1, 1, version="2")], NOW - 500)
    rows = store.overview(now=NOW + 10, connected_seconds=120)
    assert [(r["fleet"], r["device"], r["online"]) for r in rows] == [
        ("f", "a", True),
        ("f", "b", False),
        ("g", "c", False),
    ]
    assert rows[0]["agent_version"] == "1.2.0" and rows[0]["last_heartbeat_at"] == NOW
    assert rows[0]["models"] == [{"model_name": "cls", "model_version": "3"}]
    assert rows[2]["models"] == [] and rows[2]["last_heartbeat_at"] is None
    assert [r["device"] for r in store.overview(now=NOW + 10, connected_seconds=120, status="offline")] == ["b", "c"]
    assert [r["device"] for r in store.overview(now=NOW + 10, connected_seconds=120, fleet="g")] == ["c"]
    by_model = store.overview(now=NOW + 10, connected_seconds=120, model="cls", status="offline")
    assert [(r["device"], r["models"][0]["model_version"]) for r in by_model] == [("b", "2")]
    with pytest.raises(UserError, match="status must be one of online, offline"):
        store.overview(now=NOW, connected_seconds=120, status="asleep")


def test_a_failed_rollup_is_logged_and_retried(store, caplog):
    import sqlalchemy as sa

    def broken(_store, _now, _stop):
        raise sa.exc.OperationalError("DELETE", {}, Exception("database is locked"))

    loop = rollup.RollupLoop(store, 60.0, broken, clock=lambda: NOW)
    with caplog.at_level(logging.WARNING, logger="edgekiln.fleet.rollup"):
        assert loop.run_once() is None
    assert "roll-up failed" in caplog.text and "database is locked" in caplog.text
    ok = rollup.RollupLoop(
        store, 60.0, lambda s, now, stop: rollup.roll_up(s, now, raw_retention_seconds=HOUR, stop=stop), lambda: NOW
    )
    assert ok.run_once() == rollup.RollupResult(0, 0, 0)


def test_a_stopping_rollup_leaves_the_rest_for_later(store):
    device = store.authenticate(store.register_device("f", "a", now=NOW))
    for i in range(10):
        store.add_heartbeats(device, [beat(i, 1)], NOW + i)
    batches = []

    def stop() -> bool:
        batches.append(1)
        return len(batches) > 2  # two batches, then the service is shutting down

    result = rollup.roll_up(store, NOW + 2 * HOUR, raw_retention_seconds=HOUR, batch=3, stop=stop)
    assert result.heartbeats == 6 and len(store.heartbeat_ids("f", "a")) == 4
    assert rollup.roll_up(store, NOW + 2 * HOUR, raw_retention_seconds=HOUR, batch=3).heartbeats == 4


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"raw_retention_seconds": 30}, "at least 60 s"),
        ({"raw_retention_seconds": 100 * 86400.0}, "shorter than the aggregate retention"),
        ({"rollup_interval_seconds": -1}, "roll-up interval"),
    ],
)
def test_retention_options_are_checked(tmp_path, fields, message):
    with pytest.raises(UserError, match=message):
        FleetOptions(
            database_url="sqlite:///x.db", admin_token="a" * 16, object_store="local", objects_dir=tmp_path, **fields
        )


def test_worker_options_round_trip(tmp_path, monkeypatch):
    options = FleetOptions(
        database_url=f"sqlite:///{tmp_path / 'f.db'}",
        admin_token="a" * 20,
        object_store="local",
        objects_dir=tmp_path / "objects",
        raw_retention_seconds=120.0,
    )
    again = serving.options_from_json(serving.options_to_json(options))
    # Every field, the local signing secret included: a URL one worker signs, another verifies.
    assert again == options and again.local_secret == options.local_secret
    monkeypatch.delenv(serving.OPTIONS_ENV, raising=False)
    with pytest.raises(UserError, match="--workers N"):
        serving.worker_app()
    with pytest.raises(UserError, match="--workers 0 is not between 1 and 64"):
        serving.serve(options, host="127.0.0.1", port=1, workers=0)


def test_the_service_rolls_up_while_it_runs(make_fleet, hb):
    api = make_fleet(rollup_interval_seconds=0.05, raw_retention_seconds=3600.0)
    token = api.register("f", "d1")
    assert api.heartbeat(token, hb("h1"), hb("h2")).json() == {"accepted": 2, "duplicates": 0}
    api.clock[0] += 2 * 3600  # both heartbeats are now past the raw retention
    deadline = time.monotonic() + 10
    while (history := api.admin("GET", "/v1/devices/f/d1/heartbeats").json())["rolled_up"] < 2:
        assert time.monotonic() < deadline, history
        time.sleep(0.05)
    assert history == {"heartbeat_ids": [], "rolled_up": 2}
    assert api.admin("GET", "/v1/devices/f/d1").json()["heartbeats_received"] == 2
    assert api.rows("heartbeats") == 0 and api.rows("heartbeat_minutes") == 1


def test_serve_refuses_a_bad_worker_count_before_it_starts(tmp_path, capsys):
    from edgekiln.cli.main import main

    code = main(["fleet", "serve", "--data-dir", str(tmp_path / "data"), "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "--workers 0 is not between 1 and 64" in err
    assert "fleet service on" not in err and "Traceback" not in err

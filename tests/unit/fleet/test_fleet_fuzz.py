"""Property-based tests of the fleet's JSON bodies: only 2xx or 4xx come back, never a 500.

Hostile bodies found by hand (NaN and huge timestamps, a trailing newline in a name, lone
surrogates, NUL bytes, deep nesting, a 100k-digit integer) are kept as explicit examples.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=80),
    st.sampled_from(["", "d1", "f", "m", "x" * 200, "a\n", "\u0000", "\ud800", "../x", "a/b"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=20,
)
timestamps = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from([0, 1.0, 1e308, -1e308, 4.2e9]),
    json_values,
)
metric = st.fixed_dictionaries(
    {
        "metric_name": st.one_of(st.text(max_size=20), json_values),
        "value": st.one_of(st.floats(), st.integers(), json_values),
    },
    optional={"dimension": json_values, "timestamp": timestamps},
)
model_names = st.one_of(st.sampled_from(["m", "cls-1", "bad name", ""]), json_values)
model = st.fixed_dictionaries(
    {"model_name": model_names},
    optional={
        "model_version": json_values,
        "latest_inference": timestamps,
        "latest_sample_time": timestamps,
        "model_metrics": st.lists(metric, max_size=3),
    },
)
heartbeat = st.fixed_dictionaries(
    {"heartbeat_id": st.one_of(st.text(min_size=1, max_size=70), json_values), "timestamp": timestamps},
    optional={
        "device_name": st.sampled_from(["d1", "d2", "", None]),
        "device_fleet_name": st.sampled_from(["f", "g"]),
        "agent_version": json_values,
        "agent_metrics": st.lists(metric, max_size=3),
        "models": st.lists(model, max_size=3),
        "faults": st.lists(json_values, max_size=3),
        "dead_letter_batches": st.one_of(st.integers(min_value=-5, max_value=2**64), json_values),
    },
)

HOSTILE_HEARTBEATS = [
    {"heartbeat_id": "h", "timestamp": math.nan},
    {"heartbeat_id": "h", "timestamp": math.inf},
    {"heartbeat_id": "h", "timestamp": 1e308},
    {"heartbeat_id": "h\n", "timestamp": 1},
    {"heartbeat_id": "h", "timestamp": 1, "agent_version": "\ud800"},
    {"heartbeat_id": "h", "timestamp": 1, "agent_version": "a\u0000b"},
    {"heartbeat_id": "h", "timestamp": 1, "faults": [{"kind": "\ud800"}]},
    {"heartbeat_id": "h", "timestamp": 1, "models": [{"model_name": "m" * 200}]},
    {"heartbeat_id": "h", "timestamp": 1, "models": [{"model_name": "m\n"}]},
    {"heartbeat_id": "h", "timestamp": 1, "agent_metrics": [{"metric_name": "x", "value": 10**400}]},
    {"heartbeat_id": "h", "timestamp": 1, "dead_letter_batches": 10**30},
]


def _post(api, token, path, body):
    raw = json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
    return api.device(token, "POST", path, content=raw, headers={"Content-Type": "application/json"})


@pytest.fixture
def fuzz_api(make_fleet):
    api = make_fleet()
    return api, api.register("f", "d1")


def _ok(answer) -> None:
    assert answer.status_code < 500, answer.text[:500]
    answer.json()  # always a JSON answer


def test_hostile_heartbeats_get_4xx(fuzz_api):
    api, token = fuzz_api
    for body in HOSTILE_HEARTBEATS:
        answer = _post(api, token, "/v1/agent/heartbeats", {"heartbeats": [body]})
        assert 400 <= answer.status_code < 500, (body, answer.status_code)
    for raw in (
        b"[" * 100_000 + b"]" * 100_000,
        b'{"heartbeats": [{"heartbeat_id": "h", "timestamp": ' + b"9" * 100_000 + b"}]}",
        b"\xff\xfe",
        b"",
        b"null",
        b'{"heartbeats": 1}',
    ):
        answer = api.device(
            token, "POST", "/v1/agent/heartbeats", content=raw, headers={"Content-Type": "application/json"}
        )
        assert 400 <= answer.status_code < 500, (raw[:40], answer.status_code)
    assert api.rows("heartbeats") == 0


@FUZZ
@given(body=st.one_of(st.fixed_dictionaries({"heartbeats": st.lists(heartbeat, max_size=3)}), json_values))
@example(body={"heartbeats": HOSTILE_HEARTBEATS})
def test_heartbeat_bodies_never_give_a_500(fuzz_api, body):
    api, token = fuzz_api
    _ok(_post(api, token, "/v1/agent/heartbeats", body))


@FUZZ
@given(
    body=st.one_of(
        st.fixed_dictionaries(
            {"fleet": json_values, "device": json_values},
            optional={"description": json_values, "expires_in_seconds": json_values},
        ),
        st.fixed_dictionaries(
            {"fleet": st.sampled_from(["f", "g"]), "device": st.text(max_size=70)},
            optional={"expires_in_seconds": st.integers(min_value=-10, max_value=2**64)},
        ),
        json_values,
    )
)
@example(body={"fleet": "f", "device": "d\n"})
@example(body={"fleet": "f", "device": "x", "description": "\ud800"})
def test_register_bodies_never_give_a_500(fuzz_api, body):
    api, _ = fuzz_api
    raw = json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
    _ok(api.admin("POST", "/v1/devices", content=raw, headers={"Content-Type": "application/json"}))


keys = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["m/x.jsonl", "../x", "m/../../x", "m//x", "m/x\n", "/m/x", "m/" + "x" * 300, "m/\ud800"]),
    json_values,
)


@FUZZ
@given(body=st.one_of(st.fixed_dictionaries({"keys": st.lists(keys, max_size=4)}), json_values))
def test_upload_bodies_never_give_a_500(fuzz_api, body):
    api, token = fuzz_api
    _ok(_post(api, token, "/v1/agent/uploads", body))


@FUZZ
@given(
    body=st.one_of(
        st.fixed_dictionaries(
            {
                "key": keys,
                "records": st.lists(
                    st.fixed_dictionaries({"record_id": keys}, optional={"model_name": keys}), max_size=3
                ),
            },
            optional={"objects": st.lists(keys, max_size=3), "bytes": st.one_of(st.integers(), json_values)},
        ),
        json_values,
    )
)
def test_capture_bodies_never_give_a_500(fuzz_api, body):
    api, token = fuzz_api
    _ok(_post(api, token, "/v1/agent/captures", body))

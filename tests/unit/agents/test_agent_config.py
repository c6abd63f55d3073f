"""The agent config: Edge Manager keys in TOML, every invalid key named in the error."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekiln.agents.config import dump_toml, from_dict, load_config, to_dict
from edgekiln.errors import UserError

VALID = """
[device]
name = "pi-0001"
fleet = "warehouse"

[fleet]
endpoint = "http://127.0.0.1:8080"
token_file = "token"
heartbeat_period_seconds = 5

[agent]
socket = "run/agent.sock"
model_dir = "models"
state_dir = "state"

[capture]
destination = "Cloud"
buffer_size = 50
batch_size = 5
push_period_seconds = 1
base64_embed_limit = 100
periodic_upload = false
periodic_upload_period_seconds = 3
storage_limit_bytes = 2_000_000
full_policy = "RejectNewData"
ttl_seconds = 3600
"""


def test_valid_config_loads_with_paths_relative_to_the_file(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(VALID)
    config = load_config(path)
    assert config.device.name == "pi-0001" and config.device.fleet == "warehouse"
    assert config.agent.socket == tmp_path / "run" / "agent.sock"
    assert config.fleet.token_file == tmp_path / "token"
    assert config.fleet.heartbeat_period_seconds == 5.0
    c = config.capture
    assert (c.destination, c.buffer_size, c.batch_size, c.base64_embed_limit) == ("Cloud", 50, 5, 100)
    assert (c.periodic_upload, c.storage_limit_bytes, c.full_policy, c.ttl_seconds) == (
        False,
        2_000_000,
        "RejectNewData",
        3600.0,
    )


def test_defaults_mirror_edge_manager(tmp_path):
    config = from_dict(
        {
            "device": {"name": "d", "fleet": "f"},
            "agent": {"socket": "s.sock", "model_dir": "m", "state_dir": "st"},
            "capture": {"destination": "Disk", "disk_path": "cap"},
        },
        base_dir=tmp_path,
    )
    assert config.capture.full_policy == "OverwriteOldest"
    assert config.capture.batch_size == 10 and config.capture.periodic_upload is True
    assert config.fleet.endpoint == ""


def _with(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


@pytest.mark.parametrize(
    "old,new,key",
    [
        ('full_policy = "RejectNewData"', 'full_policy = "DropEverything"', "capture.full_policy"),
        ('destination = "Cloud"', 'destination = "S3"', "capture.destination"),
        ("batch_size = 5", "batch_size = 0", "capture.batch_size"),
        ("batch_size = 5", 'batch_size = "5"', "capture.batch_size"),
        ("buffer_size = 50", "buffer_size = 50\nbufer_size = 3", "capture.bufer_size"),
        ("periodic_upload = false", 'periodic_upload = "no"', "capture.periodic_upload"),
        ("storage_limit_bytes = 2_000_000", "storage_limit_bytes = 1000", "capture.storage_limit_bytes"),
        ("ttl_seconds = 3600", "ttl_seconds = -1", "capture.ttl_seconds"),
        ('name = "pi-0001"', 'name = "pi_0001!"', "device.name"),
        ('endpoint = "http://127.0.0.1:8080"', 'endpoint = "ftp://x"', "fleet.endpoint"),
        ('token_file = "token"', "", "fleet.token_file"),
        ('socket = "run/agent.sock"', "", "agent.socket"),
        ("heartbeat_period_seconds = 5", "heartbeat_period_seconds = 0", "fleet.heartbeat_period_seconds"),
        ('state_dir = "state"', 'state_dir = "state"\nmodel_dirs = "models"', "agent.model_dirs"),
        ('state_dir = "state"', 'state_dir = "state"\nmodel_dirs = []', "agent.model_dirs"),
        ('state_dir = "state"', 'state_dir = "state"\nmodel_dirs = ["a", 3]', "agent.model_dirs"),
        ('name = "pi-0001"', 'name = "%s"' % ("p" * 64), "device.name"),
    ],
)
def test_invalid_config_names_the_key(tmp_path, old, new, key):
    path = tmp_path / "agent.toml"
    path.write_text(_with(VALID, old, new))
    with pytest.raises(UserError) as info:
        load_config(path)
    assert key in info.value.one_line()
    assert str(path) in info.value.one_line()
    assert "\n" not in info.value.one_line()


def test_unknown_section_and_cross_key_rules(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(VALID + "\n[telemetry]\nx = 1\n")
    with pytest.raises(UserError, match=r"unknown section \[telemetry\]"):
        load_config(path)
    # Disk needs a path; Cloud needs the fleet (uploads go through its presigned URLs).
    base = {"device": {"name": "d", "fleet": "f"}, "agent": {"socket": "s", "model_dir": "m", "state_dir": "st"}}
    with pytest.raises(UserError, match="capture.disk_path"):
        from_dict({**base, "capture": {"destination": "Disk"}}, base_dir=tmp_path)
    with pytest.raises(UserError, match="fleet.endpoint"):
        from_dict({**base, "capture": {"destination": "Cloud"}}, base_dir=tmp_path)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[device\nname=")
    with pytest.raises(UserError, match="not valid TOML"):
        load_config(bad)


def test_token_file_errors_name_the_file(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(VALID)
    config = load_config(path)
    with pytest.raises(UserError, match="fleet.token_file"):
        config.fleet.token()
    (tmp_path / "token").write_text("  secret-token\n")
    assert config.fleet.token() == "secret-token"


def test_dump_toml_round_trips(tmp_path):
    data = {
        "device": {"name": "d", "fleet": "f"},
        "agent": {"socket": str(tmp_path / "a b.sock"), "model_dir": "m", "state_dir": "s"},
        "capture": {"destination": "Disk", "disk_path": 'x"y', "periodic_upload": False, "batch_size": 3},
    }
    path = tmp_path / "agent.toml"
    path.write_text(dump_toml(data))
    config = load_config(path)
    assert config.agent.socket == Path(tmp_path / "a b.sock")
    assert config.capture.disk_path == tmp_path / 'x"y' and config.capture.batch_size == 3


def test_model_dirs_default_to_the_model_dir_and_round_trip(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(VALID)
    assert load_config(path).agent.allowed_model_dirs == (tmp_path / "models",)
    path.write_text(_with(VALID, 'state_dir = "state"', 'state_dir = "state"\nmodel_dirs = ["models", "/opt/m"]'))
    config = load_config(path)
    assert config.agent.allowed_model_dirs == (tmp_path / "models", Path("/opt/m"))
    again = tmp_path / "again.toml"
    again.write_text(dump_toml(to_dict(config)))
    assert load_config(again).agent.model_dirs == config.agent.model_dirs

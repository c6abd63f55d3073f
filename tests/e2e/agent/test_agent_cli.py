"""The commands as a user runs them: edgekiln fleet …, edgekiln agent, edgekiln agent-ctl …"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest


def edgekiln(*args, env=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "edgekiln.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_agent_and_fleet_commands(fleet_server, agent_process, short_dir, compiled):
    from edgekiln.zoo import sample_image_path

    artifact = compiled("zoo:mobilenet_v2", "x86_64").path
    rasp4b = compiled("zoo:mobilenet_v2", "rasp4b").path
    image = str(sample_image_path())
    fleet = fleet_server()
    admin = {"EDGEKILN_FLEET_ADMIN_TOKEN": fleet.admin_token, "EDGEKILN_FLEET_ENDPOINT": fleet.endpoint}

    registered = edgekiln("fleet", "register", "plant", "cam-7", "--token-out", short_dir / "token", env=admin)
    assert registered.returncode == 0, registered.stderr
    assert "written to" in registered.stdout and oct((short_dir / "token").stat().st_mode & 0o777) == "0o600"
    again = edgekiln("fleet", "register", "plant", "cam-7", env=admin)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "409" in again.stderr

    config = {
        "device": {"name": "cam-7", "fleet": "plant"},
        "fleet": {
            "endpoint": fleet.endpoint,
            "token_file": str(short_dir / "token"),
            "heartbeat_period_seconds": 0.3,
            "retry_max_seconds": 0.5,
        },
        "agent": {
            "socket": str(short_dir / "cli.sock"),
            "model_dir": str(artifact.parent),
            "state_dir": str(short_dir / "state"),
        },
        "capture": {"destination": "Cloud", "batch_size": 1, "push_period_seconds": 0.1},
    }
    agent = agent_process(config, name="cli")
    ctl = ("agent-ctl", "--config", agent.config)
    assert edgekiln("agent", "--config", agent.config, "--check").returncode == 0

    loaded = edgekiln(*ctl, "load", artifact.name, "mnv2")
    assert loaded.returncode == 0, loaded.stderr
    assert "input" in loaded.stdout and "[1, 3, 224, 224]" in loaded.stdout
    listed = json.loads(edgekiln(*ctl, "--json", "list").stdout)
    assert [m["name"] for m in listed["models"]] == ["mnv2"]
    described = json.loads(edgekiln(*ctl, "--json", "describe", "mnv2").stdout)
    assert described["outputs"][0]["shape"] == [1, 1000]

    refused = edgekiln(*ctl, "load", str(rasp4b), "pi")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "FAILED_PRECONDITION" in refused.stderr and "aarch64" in refused.stderr

    predicted = edgekiln(*ctl, "--json", "predict", "mnv2", image, "--capture")
    assert predicted.returncode == 0, predicted.stderr
    result = json.loads(predicted.stdout)
    run = json.loads(edgekiln("run", artifact, image, "--json").stdout)["results"][0]["top"]
    assert result["top"][0]["index"] == run[0]["index"]  # the same top-1 as `edgekiln run`
    capture_id = result["capture_id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = edgekiln(*ctl, "capture-status", capture_id).stdout.strip()
        if status.endswith("SUCCESS"):
            break
        time.sleep(0.3)
    assert status == f"{capture_id}: SUCCESS"
    missing = edgekiln(*ctl, "capture-status", "no-such-capture")
    assert missing.returncode == 2 and "NOT_FOUND" in missing.stderr

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        device = json.loads(edgekiln("fleet", "describe", "plant", "cam-7", "--json", env=admin).stdout)
        if device["models"] and device["models"][0]["metrics"].get("inference_count"):
            break
        time.sleep(0.3)
    assert device["models"][0]["model_name"] == "mnv2" and device["captures"]["records"] == 1
    text = edgekiln("fleet", "describe", "plant", "cam-7", env=admin).stdout
    assert "model mnv2" in text and "1 inferences" in text
    report = json.loads(edgekiln("fleet", "report", "plant", "--json", env=admin).stdout)
    assert report["device_stats"]["registered_device_count"] == 1
    assert report["model_stats"][0]["model_name"] == "mnv2"
    captures = edgekiln("fleet", "captures", "plant", "cam-7", env=admin).stdout
    assert "1 records in 1 batches" in captures and "plant/cam-7/mnv2/" in captures
    devices = edgekiln("fleet", "devices", env=admin).stdout
    assert "plant/cam-7" in devices and "yes" in devices

    assert edgekiln(*ctl, "unload", "mnv2").returncode == 0
    assert agent.stop() == 0


@pytest.mark.parametrize(
    "text,key",
    [
        (
            '[device]\nname = "d"\nfleet = "f"\n[agent]\nsocket = "s"\nmodel_dir = "m"\nstate_dir = "x"\n'
            '[capture]\ndestination = "Disk"\ndisk_path = "c"\nfull_policy = "Drop"\n',
            "capture.full_policy",
        ),
        ('[device]\nname = "d"\n', "device.fleet"),
    ],
)
def test_invalid_config_is_one_line_naming_the_key(short_dir, text, key):
    path = short_dir / "bad.toml"
    path.write_text(text)
    result = edgekiln("agent", "--config", path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and key in result.stderr
    assert result.stderr.startswith("edgekiln agent: error:")


def test_errors_without_servers_are_one_line(short_dir):
    result = edgekiln("agent-ctl", "--socket", short_dir / "none.sock", "list")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "UNAVAILABLE" in result.stderr
    result = edgekiln("fleet", "devices", "--endpoint", "http://127.0.0.1:9", env={"EDGEKILN_FLEET_ADMIN_TOKEN": "x"})
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "no fleet service at http://127.0.0.1:9" in result.stderr


def test_fleet_demo_shows_the_whole_loop(short_dir, compiled):
    artifact = compiled("zoo:mobilenet_v2", "x86_64").path
    root = Path(__file__).resolve().parents[3]  # make demo-fleet runs the source tree's devtools
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "devtools.fleet_demo",
            "--artifact",
            str(artifact),
            "--work",
            str(short_dir / "demo"),
            "--predictions",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for part in (
        "== LoadModel",
        "3 predictions",
        "demo-fleet/demo-device-1",
        "3 inferences, 0 errors",
        "captures delivered 3",
        "fleet demo-fleet: 1 registered, 1 connected",
        "3 records in",
        "input-tensor-0.bin",
        "signed demo-classifier version 1",
        "demo-v1: fleet demo-fleet, model demo-classifier version 1",
        "demo-v2: fleet demo-fleet, model demo-classifier version 2",
        "halted by a failure under ROLLBACK_ON_FAILURE: demo-device-1: ROLLED_BACK",
    ):
        assert part in out, part
    # Version 1 deployed on the canary; version 2 rolled back there, the plan halted.
    v1, v2 = out.split("== deployment plan demo-v1")[1], out.split("== deployment plan demo-v2")[1]
    assert "canary           DEPLOYED" in v1 and "everyone         DEPLOYED" in v1
    assert "canary           FAILED" in v2 and "everyone         READYTODEPLOY" in v2
    answers = [line.split(": ", 1)[1] for line in out.splitlines() if "answers from demo-classifier v1" in line]
    assert len(answers) == 2 and answers[0] == answers[1], answers  # the same top-1 before and after the rollback
    assert not any(p.name.endswith(".sock") for p in (short_dir / "demo" / "agent").iterdir())  # all stopped

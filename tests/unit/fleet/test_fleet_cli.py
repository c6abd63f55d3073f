"""``edgekiln fleet register | device rotate | device revoke | audit | describe`` against a
fleet service served by uvicorn in a thread of this process."""

from __future__ import annotations

import json
import time

from edgekiln.cli.main import main

ADMIN = "admin-token-0123456789"


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["fleet", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def heartbeat(endpoint: str, token: str) -> int:
    import urllib.error
    import urllib.request

    body = json.dumps(
        {"heartbeats": [{"heartbeat_id": f"h{time.time_ns()}", "timestamp": time.time(), "dead_letter_batches": 4}]}
    ).encode()
    request = urllib.request.Request(
        endpoint + "/v1/agent/heartbeats",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_token_lifecycle_from_the_command_line(served, capsys, tmp_path):
    code, out, _ = run(capsys, "register", "plant", "cam-1", "--token-out", str(tmp_path / "t1"), "--expires-in", "600")
    assert code == 0 and "written to" in out and "expires" in out
    first = (tmp_path / "t1").read_text().strip()
    assert oct((tmp_path / "t1").stat().st_mode & 0o777) == "0o600"
    assert heartbeat(served, first) == 200

    code, out, _ = run(capsys, "describe", "plant", "cam-1")
    assert code == 0 and "token expires" in out and "dead-lettered capture batches" in out and ": 4" in out

    code, out, _ = run(capsys, "device", "rotate", "plant", "cam-1", "--token-out", str(tmp_path / "t2"))
    assert code == 0 and "new token for plant/cam-1" in out
    second = (tmp_path / "t2").read_text().strip()
    assert second != first and heartbeat(served, first) == 401 and heartbeat(served, second) == 200

    code, out, _ = run(capsys, "device", "revoke", "plant", "cam-1")
    assert code == 0 and "revoked the token of plant/cam-1" in out
    assert heartbeat(served, second) == 401

    code, out, _ = run(capsys, "audit", "--fleet", "plant", "--json")
    actions = [e["action"] for e in json.loads(out)["entries"]]
    assert actions == ["register", "rotate", "revoke", "auth-refused"]
    code, out, _ = run(capsys, "audit", "--device", "cam-1")
    assert code == 0 and len(out.strip().splitlines()) == 4 and "by admin from 127.0.0.1" in out

    code, _, err = run(capsys, "device", "revoke", "plant", "nobody")
    assert code == 2 and err.count("\n") == 1 and "404" in err
    code, _, err = run(capsys, "register", "plant", "bad name")
    assert code == 2 and err.count("\n") == 1 and "422" in err

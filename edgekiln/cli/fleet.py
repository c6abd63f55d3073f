"""``edgekiln fleet``: run the fleet service, and talk to it as an operator.

    edgekiln fleet serve [--host 127.0.0.1] [--port 8080] [--db URL] [--data-dir DIR]
                         [--s3-endpoint URL --bucket NAME | --objects-dir DIR]
    edgekiln fleet register FLEET DEVICE [--token-out FILE]
    edgekiln fleet devices [--fleet FLEET]
    edgekiln fleet describe FLEET DEVICE
    edgekiln fleet report FLEET
    edgekiln fleet captures FLEET DEVICE
    edgekiln fleet demo --artifact MODEL.tar.gz [--work DIR]

Operator commands reach the service at ``--endpoint`` (or ``EDGEKILN_FLEET_ENDPOINT``)
with the admin token from ``--admin-token-file`` (or ``EDGEKILN_FLEET_ADMIN_TOKEN``).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_ENDPOINT = "http://127.0.0.1:8080"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("fleet", help="run the fleet service or query it",
                                   description="The fleet service (devices, heartbeats, reports, capture uploads).")
    commands = parser.add_subparsers(dest="fleet_command", metavar="COMMAND")
    commands.required = True

    serve = commands.add_parser("serve", help="run the fleet service (FastAPI + SQLAlchemy)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    serve.add_argument("--data-dir", default="fleet-data", help="SQLite file, admin token and local objects "
                                                                 "(default: ./fleet-data)")
    serve.add_argument("--db", help="database URL: sqlite:///PATH (default: DATA_DIR/fleet.db) or "
                                    "postgresql://user@host/db")
    serve.add_argument("--s3-endpoint", help="S3 endpoint URL (credentials from AWS_ACCESS_KEY_ID/"
                                             "AWS_SECRET_ACCESS_KEY); without it objects go to a local directory")
    serve.add_argument("--bucket", default="edgekiln-captures", help="S3 bucket (created if missing)")
    serve.add_argument("--region", default="us-east-1", help="S3 region (default: us-east-1)")
    serve.add_argument("--objects-dir", help="local object directory (default: DATA_DIR/objects)")
    serve.add_argument("--admin-token-file", help="admin token file (default: DATA_DIR/admin-token, "
                                                  "created with a new token if missing)")
    serve.add_argument("--presign-seconds", type=int, default=300, help="lifetime of upload URLs (default: 300)")
    serve.add_argument("--connected-seconds", type=float, default=120.0,
                       help="a device is connected if it sent a heartbeat this recently (default: 120)")
    serve.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    serve.set_defaults(func=run_serve)

    def client_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--endpoint", default=os.environ.get("EDGEKILN_FLEET_ENDPOINT", DEFAULT_ENDPOINT),
                       help=f"fleet service URL (default: $EDGEKILN_FLEET_ENDPOINT or {DEFAULT_ENDPOINT})")
        p.add_argument("--admin-token-file", help="admin token file (default: $EDGEKILN_FLEET_ADMIN_TOKEN)")
        p.add_argument("--json", action="store_true", help="print JSON")

    reg = commands.add_parser("register", help="register a device and issue its token")
    reg.add_argument("fleet", metavar="FLEET")
    reg.add_argument("device", metavar="DEVICE")
    reg.add_argument("--description", default="")
    reg.add_argument("--token-out", metavar="FILE", help="write the device token here (mode 0600)")
    client_options(reg)
    reg.set_defaults(func=run_client)

    devices = commands.add_parser("devices", help="list devices")
    devices.add_argument("--fleet", help="only this fleet")
    client_options(devices)
    devices.set_defaults(func=run_client)

    for name, help_text in (("describe", "describe a device: metrics, models, captures, faults"),
                            ("captures", "list a device's captured batches and objects")):
        p = commands.add_parser(name, help=help_text)
        p.add_argument("fleet", metavar="FLEET")
        p.add_argument("device", metavar="DEVICE")
        client_options(p)
        p.set_defaults(func=run_client)

    report = commands.add_parser("report", help="fleet report (Edge Manager's GetDeviceFleetReport)")
    report.add_argument("fleet", metavar="FLEET")
    client_options(report)
    report.set_defaults(func=run_client)

    demo = commands.add_parser("demo", help="the whole loop on this machine: SeaweedFS, fleet, agent, model")
    demo.add_argument("--artifact", required=True, help="an artifact compiled for this machine")
    demo.add_argument("--work", default="demo-out/fleet", help="working directory (default: demo-out/fleet)")
    demo.add_argument("--image", help="image to classify (default: the zoo's sample image)")
    demo.add_argument("--predictions", type=int, default=20, help="predictions to run and capture (default: 20)")
    demo.set_defaults(func=run_demo)


# -- serve ---------------------------------------------------------------------------
def run_serve(args: argparse.Namespace) -> int:
    import logging

    from edgekiln.errors import DependencyError, UserError

    try:
        import fastapi  # noqa: F401 - what edgekiln.fleet.app imports; checked here to name the extra
        import sqlalchemy  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise DependencyError(f"the fleet service needs {exc.name}", hint="pip install 'edgekiln[fleet]'") from None
    from edgekiln.fleet.app import FleetOptions, create_app

    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    token_file = Path(args.admin_token_file) if args.admin_token_file else data_dir / "admin-token"
    token = os.environ.get("EDGEKILN_FLEET_ADMIN_TOKEN") or _admin_token(token_file)
    options = FleetOptions(
        database_url=args.db or f"sqlite:///{(data_dir / 'fleet.db').resolve()}",
        admin_token=token,
        object_store="s3" if args.s3_endpoint else "local",
        objects_dir=Path(args.objects_dir) if args.objects_dir else data_dir / "objects",
        s3_endpoint=args.s3_endpoint, s3_bucket=args.bucket, s3_region=args.region,
        presign_seconds=args.presign_seconds, connected_seconds=args.connected_seconds)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(options)
    if not (1 <= args.port <= 65535):
        raise UserError(f"--port {args.port} is not a TCP port")
    print(f"fleet service on http://{args.host}:{args.port} (database {app.state.store.engine.url.render_as_string()}, "
          f"admin token in {token_file if not os.environ.get('EDGEKILN_FLEET_ADMIN_TOKEN') else '$EDGEKILN_FLEET_ADMIN_TOKEN'})",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0


def _admin_token(path: Path) -> str:
    from edgekiln.errors import UserError

    if path.is_file():
        token = path.read_text().strip()
        if not token:
            raise UserError(f"admin token file {path} is empty")
        return token
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


# -- operator client -----------------------------------------------------------------
class FleetAdmin:
    """HTTP calls to the fleet service with the admin token (standard library only)."""

    def __init__(self, endpoint: str, token: str, timeout: float = 15.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        import urllib.error
        import urllib.request

        from edgekiln.errors import UserError

        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.endpoint + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read()).get("detail", "")
            except (ValueError, AttributeError):
                detail = exc.reason
            raise UserError(f"fleet service: {method} {path}: {exc.code} {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise UserError(f"fleet service at {self.endpoint} unreachable: {getattr(exc, 'reason', exc)}") from None


def _admin(args: argparse.Namespace) -> FleetAdmin:
    from edgekiln.errors import UserError

    token = os.environ.get("EDGEKILN_FLEET_ADMIN_TOKEN", "")
    if args.admin_token_file:
        try:
            token = Path(args.admin_token_file).read_text().strip()
        except OSError as exc:
            raise UserError(f"admin token file {args.admin_token_file}: {exc.strerror}") from None
    if not token:
        raise UserError("no admin token: give --admin-token-file or set EDGEKILN_FLEET_ADMIN_TOKEN")
    return FleetAdmin(args.endpoint, token)


def run_client(args: argparse.Namespace) -> int:
    admin = _admin(args)
    command = args.fleet_command
    if command == "register":
        result = admin.call("POST", "/v1/devices", {"fleet": args.fleet, "device": args.device,
                                                    "description": args.description})
        if args.token_out:
            _write_secret(Path(args.token_out), result["token"])
            result = dict(result, token=f"(written to {args.token_out})")
    elif command == "devices":
        result = admin.call("GET", "/v1/devices" + (f"?fleet={args.fleet}" if args.fleet else ""))
    elif command == "describe":
        result = admin.call("GET", f"/v1/devices/{args.fleet}/{args.device}")
    elif command == "captures":
        result = admin.call("GET", f"/v1/devices/{args.fleet}/{args.device}/captures")
    else:
        result = admin.call("GET", f"/v1/fleets/{args.fleet}/report")
    print(json.dumps(result, indent=2) if args.json else render(command, result))
    return 0


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def render(command: str, result: dict[str, Any]) -> str:
    """Human-readable output of the operator commands."""
    if command == "register":
        return f"registered {result['fleet']}/{result['device']}; token: {result['token']}"
    if command == "devices":
        rows = [f"{'fleet/device':<32} {'agent':<8} {'connected':<9} last heartbeat"]
        for d in result["devices"]:
            rows.append(f"{d['fleet'] + '/' + d['device']:<32} {d['agent_version'] or '-':<8} "
                        f"{'yes' if d['connected'] else 'no':<9} {_when(d['last_heartbeat_at'])}")
        return "\n".join(rows)
    if command == "describe":
        m = result["agent_metrics"]
        lines = [f"device {result['fleet']}/{result['device']}  agent {result['agent_version'] or '-'}  "
                 f"{'connected' if result['connected'] else 'not connected'}, last heartbeat "
                 f"{_when(result['last_heartbeat_at'])} ({result['heartbeats_received']} received)"]
        if m:
            lines.append(f"  cpu {m.get('cpu_percent', 0):.1f}%  rss {m.get('memory_rss_bytes', 0) / 2**20:.1f} MiB  "
                         f"uptime {m.get('uptime_seconds', 0):.0f} s  restarts {m.get('restarts', 0):.0f}  "
                         f"capture backlog {m.get('capture_backlog_records', 0):.0f}")
            lines.append(f"  captures delivered {m.get('captures_delivered', 0):.0f}, rejected "
                         f"{m.get('captures_rejected', 0):.0f}, overwritten {m.get('captures_overwritten', 0):.0f}, "
                         f"expired {m.get('captures_expired', 0):.0f}")
        for model in result["models"]:
            mm = model["metrics"]
            p50, p99 = mm.get("latency_p50_ms"), mm.get("latency_p99_ms")
            lines.append(f"  model {model['model_name']} {model['model_version']}: "
                         f"{mm.get('inference_count', 0):.0f} inferences, {mm.get('error_count', 0):.0f} errors, "
                         f"p50 {p50 if p50 is not None else float('nan'):.2f} ms, "
                         f"p99 {p99 if p99 is not None else float('nan'):.2f} ms, "
                         f"last inference {_when(model['latest_inference'])}, "
                         f"last sample {_when(model['latest_sample_time'])}")
        c = result["captures"]
        lines.append(f"  captured records in the fleet: {c['records']} in {c['batches']} batches ({c['bytes']} bytes)")
        for fault in result["faults"]:
            lines.append(f"  fault: {fault.get('kind')}: {fault.get('error', '')} {fault.get('moved_to', '')}".rstrip())
        return "\n".join(lines)
    if command == "captures":
        lines = [f"{len(result['records'])} records in {len(result['batches'])} batches; objects in {result['store']}:"]
        lines += [f"  {o['size']:>9}  {o['key']}" for o in result["objects"]]
        return "\n".join(lines)
    s = result["device_stats"]
    lines = [f"fleet {result['device_fleet_name']}: {s['registered_device_count']} registered, "
             f"{s['connected_device_count']} connected"]
    lines += [f"  agent {v['version']}: {v['agent_count']} devices" for v in result["agent_versions"]]
    for m in result["model_stats"]:
        lines.append(f"  model {m['model_name']} {m['model_version']}: connected {m['connected_device_count']}, "
                     f"offline {m['offline_device_count']}, active {m['active_device_count']}, "
                     f"sampling {m['sampling_device_count']}")
    return "\n".join(lines)


# -- demo ----------------------------------------------------------------------------
def run_demo(args: argparse.Namespace) -> int:
    """Start SeaweedFS, the fleet service and an agent; load the model, predict with
    capture, and print what the fleet sees.  Everything runs on loopback and stops."""
    import shutil
    import signal
    import subprocess

    from edgekiln.agents.config import dump_toml
    from edgekiln.agents.service import AgentClient
    from edgekiln.errors import UserError
    from edgekiln.fleet.devservers import SeaweedS3, free_ports

    artifact = Path(args.artifact).resolve()
    if not artifact.is_file():
        raise UserError(f"artifact {artifact} does not exist; build it first (make demo compiles it)")
    if args.image and not Path(args.image).is_file():
        raise UserError(f"image {args.image} does not exist")
    if not 1 <= args.predictions <= 1000:
        raise UserError("--predictions must be between 1 and 1000")
    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    processes: list[subprocess.Popen[bytes]] = []

    def spawn(argv: list[str], log_name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(work / log_name, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "edgekiln.cli.main", *argv], stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **(env or {})})
        processes.append(proc)
        return proc

    def wait_for(what: str, check: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in processes:
                if proc.poll() is not None:
                    raise UserError(f"demo: a process exited with {proc.returncode} while waiting for {what}; "
                                    f"see the logs in {work}")
            value = check()
            if value:
                return value
            time.sleep(0.2)
        raise UserError(f"demo: timed out after {timeout:g} s waiting for {what}; see the logs in {work}")

    s3 = SeaweedS3(work / "s3")
    print(f"== starting SeaweedFS (S3 on loopback, data in {work / 's3'})", flush=True)
    s3.start()
    try:
        port = free_ports(1)[0]
        endpoint = f"http://127.0.0.1:{port}"
        print(f"== starting the fleet service on {endpoint} (SQLite in {work / 'fleet'})", flush=True)
        spawn(["fleet", "serve", "--port", str(port), "--data-dir", str(work / "fleet"),
               "--s3-endpoint", s3.endpoint, "--bucket", "edgekiln-demo", "--connected-seconds", "30"],
              "fleet.log", s3.env())
        token_file = work / "fleet" / "admin-token"
        wait_for("the fleet service", lambda: token_file.is_file() and _healthy(endpoint), 60)
        admin = FleetAdmin(endpoint, token_file.read_text().strip())
        registered = admin.call("POST", "/v1/devices", {"fleet": "demo-fleet", "device": "demo-device-1",
                                                        "description": "make demo"})
        _write_secret(work / "agent" / "device-token", registered["token"])
        config = {
            "device": {"name": "demo-device-1", "fleet": "demo-fleet"},
            "fleet": {"endpoint": endpoint, "token_file": str(work / "agent" / "device-token"),
                      "heartbeat_period_seconds": 1.0, "retry_max_seconds": 2.0},
            "agent": {"socket": str(work / "agent" / "agent.sock"), "model_dir": str(artifact.parent),
                      "state_dir": str(work / "agent" / "state")},
            "capture": {"destination": "Cloud", "batch_size": 5, "push_period_seconds": 0.5,
                        "periodic_upload_period_seconds": 1.0, "base64_embed_limit": 4096},
        }
        (work / "agent" / "agent.toml").write_text(dump_toml(config))
        print(f"== starting the agent for demo-fleet/demo-device-1 ({work / 'agent' / 'agent.toml'})", flush=True)
        agent = spawn(["agent", "--config", str(work / "agent" / "agent.toml")], "agent.log")
        from edgekiln.zoo import sample_image_path

        image = Path(args.image) if args.image else Path(str(sample_image_path()))
        with AgentClient(work / "agent" / "agent.sock") as client:
            wait_for("the agent's socket", (work / "agent" / "agent.sock").exists, 60)
            client.wait_ready(30)
            model = client.load_model(artifact, "demo-model")
            print(f"== LoadModel {artifact.name} as demo-model: input {model['inputs'][0]['shape']}, "
                  f"output {model['outputs'][0]['shape']}", flush=True)
            captures = []
            for _ in range(args.predictions):
                answer = client.predict_image("demo-model", image, top_k=3)
                captures.append(client.capture("demo-model", input_tensors={model["inputs"][0]["name"]: answer["input"]},
                                               output_tensors={model["outputs"][0]["name"]: answer["outputs"][0]}))
            top = answer["top"][0]
            print(f"== {args.predictions} predictions on {image.name}, each captured; top-1: {top['label']} "
                  f"(class {top['index']}, p={top['probability']:.4f})", flush=True)
            wait_for("captured data to reach S3",
                     lambda: all(client.capture_status(c) == "SUCCESS" for c in captures), 90)
        def settled() -> bool:
            device = admin.call("GET", "/v1/devices/demo-fleet/demo-device-1")
            return device["agent_metrics"].get("captures_delivered") == args.predictions and any(
                m["metrics"].get("inference_count") == args.predictions for m in device["models"])

        wait_for("a heartbeat with the model's metrics and the deliveries", settled, 60)
        print("\n== the fleet's devices\n" + render("devices", admin.call("GET", "/v1/devices")))
        print("\n== the device and its model metrics\n" +
              render("describe", admin.call("GET", "/v1/devices/demo-fleet/demo-device-1")))
        print("\n== fleet report\n" + render("report", admin.call("GET", "/v1/fleets/demo-fleet/report")))
        listing = admin.call("GET", "/v1/devices/demo-fleet/demo-device-1/captures")
        shown = [o for o in listing["objects"] if o["key"].endswith(".jsonl")][:3]
        first = shown[0]["key"] if shown else ""
        shown += [o for o in listing["objects"] if first and o["key"].startswith(first[:-len(".jsonl")] + "/")]
        print("\n== captured objects as the fleet sees them (the first batches and the tensors of one)\n" +
              render("captures", dict(listing, objects=shown)) +
              f"\n  ... {len(listing['objects'])} objects in all")
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
    finally:
        for proc in reversed(processes):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        s3.stop()
    print(f"\n== done; logs and state in {work}")
    return 0


def _healthy(endpoint: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(endpoint + "/v1/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False

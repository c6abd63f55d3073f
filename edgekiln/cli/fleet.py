"""``edgekiln fleet``: run the fleet service, and talk to it as an operator.

    edgekiln fleet serve [--host 127.0.0.1] [--port 8080] [--db URL] [--data-dir DIR]
                         [--s3-endpoint URL --bucket NAME | --objects-dir DIR] [--workers N]
                         [--raw-retention S] [--aggregate-retention S] [--rollup-every S]
    edgekiln fleet register FLEET DEVICE [--token-out FILE] [--expires-in SECONDS]
    edgekiln fleet device rotate FLEET DEVICE [--token-out FILE] [--expires-in SECONDS]
    edgekiln fleet device revoke FLEET DEVICE
    edgekiln fleet audit [--fleet FLEET] [--device DEVICE]
    edgekiln fleet devices [--fleet FLEET]
    edgekiln fleet describe FLEET DEVICE
    edgekiln fleet report FLEET
    edgekiln fleet captures FLEET DEVICE
    edgekiln fleet package upload PKG | package list
    edgekiln fleet deploy create|start-stage|stop-stage|describe|list-devices|list …
        (signed packages and staged deployment plans: ``edgekiln.cli.fleet_deploy``)

Operator commands reach the service at ``--endpoint`` (or ``EDGEKILN_FLEET_ENDPOINT``)
with the admin token from ``--admin-token-file`` (or ``EDGEKILN_FLEET_ADMIN_TOKEN``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

DEFAULT_ENDPOINT = "http://127.0.0.1:8080"
# The admin token itself (never a file name; a file is --admin-token-file).
ADMIN_TOKEN_ENV = "EDGEKILN_FLEET_ADMIN_TOKEN"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fleet",
        help="run the fleet service or query it",
        description="The fleet service (devices, heartbeats, reports, capture uploads, packages, deployment plans).",
    )
    commands = parser.add_subparsers(dest="fleet_command", metavar="COMMAND")
    commands.required = True
    _add_serve(commands)
    _add_client_commands(commands)


def _client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--endpoint",
        default=os.environ.get("EDGEKILN_FLEET_ENDPOINT", DEFAULT_ENDPOINT),
        help=f"fleet service URL (default: $EDGEKILN_FLEET_ENDPOINT or {DEFAULT_ENDPOINT})",
    )
    p.add_argument(
        "--admin-token-file",
        metavar="FILE",
        help=f"file holding the admin token (default: the token itself in ${ADMIN_TOKEN_ENV})",
    )
    p.add_argument("--json", action="store_true", help="print JSON")


def _add_serve(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="run the fleet service (FastAPI + SQLAlchemy)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    serve.add_argument(
        "--data-dir", default="fleet-data", help="SQLite file, admin token and local objects (default: ./fleet-data)"
    )
    serve.add_argument(
        "--db", help="database URL: sqlite:///PATH (default: DATA_DIR/fleet.db) or postgresql://user@host/db"
    )
    serve.add_argument(
        "--s3-endpoint",
        help="S3 endpoint URL (credentials from AWS_ACCESS_KEY_ID/"
        "AWS_SECRET_ACCESS_KEY); without it objects go to a local directory",
    )
    serve.add_argument("--bucket", default="edgekiln-captures", help="S3 bucket (created if missing)")
    serve.add_argument("--region", default="us-east-1", help="S3 region (default: us-east-1)")
    serve.add_argument("--objects-dir", help="local object directory (default: DATA_DIR/objects)")
    serve.add_argument(
        "--admin-token-file",
        metavar="FILE",
        help="file holding the admin token (default: DATA_DIR/admin-token, created with a new token if "
        f"missing; ${ADMIN_TOKEN_ENV}, the token itself, replaces that default file when set)",
    )
    serve.add_argument("--presign-seconds", type=int, default=300, help="lifetime of upload URLs (default: 300)")
    serve.add_argument(
        "--connected-seconds",
        type=float,
        default=120.0,
        help="a device is connected if it sent a heartbeat this recently (default: 120)",
    )
    serve.add_argument(
        "--max-body-bytes",
        type=int,
        default=4 << 20,
        help="largest JSON request body; larger ones get 413 unread (default: 4 MiB)",
    )
    serve.add_argument(
        "--max-object-bytes",
        type=int,
        default=256 << 20,
        help="largest upload to the local object store (default: 256 MiB)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing the port; they keep nothing in memory, everything in the "
        "database and object store (default: 1; use PostgreSQL when more than one writes a lot)",
    )
    serve.add_argument(
        "--raw-retention",
        type=float,
        default=86400.0,
        metavar="SECONDS",
        help="raw heartbeats older than this are rolled up into per-minute aggregates (default: 86400, a day)",
    )
    serve.add_argument(
        "--aggregate-retention",
        type=float,
        default=90 * 86400.0,
        metavar="SECONDS",
        help="per-minute aggregates older than this are dropped (default: 7776000, 90 days)",
    )
    serve.add_argument(
        "--rollup-every",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how often each worker runs the roll-up; 0 turns it off (default: 60)",
    )
    serve.add_argument("--api-docs", action="store_true", help="serve /docs and /openapi.json (default: off)")
    serve.add_argument(
        "--secure-cookies", action="store_true", help="mark the dashboard's session cookie Secure (behind HTTPS)"
    )
    serve.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    serve.set_defaults(func=run_serve)


def _add_client_commands(commands: argparse._SubParsersAction) -> None:
    client_options = _client_options
    reg = commands.add_parser("register", help="register a device and issue its token")
    reg.add_argument("fleet", metavar="FLEET")
    reg.add_argument("device", metavar="DEVICE")
    reg.add_argument("--description", default="")
    reg.add_argument("--token-out", metavar="FILE", help="write the device token here (mode 0600)")
    reg.add_argument(
        "--expires-in", type=int, metavar="SECONDS", help="the token expires after this long (default: never)"
    )
    client_options(reg)
    reg.set_defaults(func=run_client)

    device = commands.add_parser("device", help="rotate or revoke a device's token")
    device_commands = device.add_subparsers(dest="device_command", metavar="ACTION")
    device_commands.required = True
    rotate = device_commands.add_parser("rotate", help="issue a new token; the old one stops working at once")
    rotate.add_argument("--token-out", metavar="FILE", help="write the new token here (mode 0600)")
    rotate.add_argument("--expires-in", type=int, metavar="SECONDS", help="the new token expires after this long")
    revoke = device_commands.add_parser("revoke", help="refuse the device's token from now on (rotate to re-enable)")
    for p in (rotate, revoke):
        p.add_argument("fleet", metavar="FLEET")
        p.add_argument("device", metavar="DEVICE")
        client_options(p)
        p.set_defaults(func=run_client)

    audit = commands.add_parser("audit", help="who registered, rotated or revoked which token, and when")
    audit.add_argument("--fleet", help="only this fleet")
    audit.add_argument("--device", help="only devices of this name")
    audit.add_argument("--limit", type=int, default=1000, help="the newest N entries (default: 1000)")
    client_options(audit)
    audit.set_defaults(func=run_client)

    devices = commands.add_parser("devices", help="list devices")
    devices.add_argument("--fleet", help="only this fleet")
    client_options(devices)
    devices.set_defaults(func=run_client)

    for name, help_text in (
        ("describe", "describe a device: metrics, models, captures, faults"),
        ("captures", "list a device's captured batches and objects"),
    ):
        p = commands.add_parser(name, help=help_text)
        p.add_argument("fleet", metavar="FLEET")
        p.add_argument("device", metavar="DEVICE")
        client_options(p)
        p.set_defaults(func=run_client)

    report = commands.add_parser("report", help="fleet report (Edge Manager's GetDeviceFleetReport)")
    report.add_argument("fleet", metavar="FLEET")
    client_options(report)
    report.set_defaults(func=run_client)

    from edgekiln.cli import fleet_deploy

    fleet_deploy.register(commands, client_options)


# -- serve ---------------------------------------------------------------------------
def run_serve(args: argparse.Namespace) -> int:
    import logging

    from edgekiln.errors import DependencyError, UserError

    try:
        import fastapi  # noqa: F401 - what edgekiln.fleet.app imports; checked here to name the extra
        import sqlalchemy
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise DependencyError(f"the fleet service needs {exc.name}", hint="pip install 'edgekiln[fleet]'") from None
    from edgekiln.fleet.database import make_private_dirs, normalize_url
    from edgekiln.fleet.options import FleetOptions
    from edgekiln.fleet.serving import check_workers, serve

    data_dir = Path(args.data_dir)
    make_private_dirs(data_dir, 0o700)  # the database, the admin token, local objects
    token_file = Path(args.admin_token_file) if args.admin_token_file else data_dir / "admin-token"
    # --admin-token-file is always a file, and a file named on the command line wins; the
    # variable holds the token itself and stands in for the default file only.
    env_token = "" if args.admin_token_file else os.environ.get(ADMIN_TOKEN_ENV, "")
    token = env_token or _admin_token(token_file)
    options = FleetOptions(
        database_url=args.db or f"sqlite:///{(data_dir / 'fleet.db').resolve()}",
        admin_token=token,
        object_store="s3" if args.s3_endpoint else "local",
        objects_dir=Path(args.objects_dir) if args.objects_dir else data_dir / "objects",
        s3_endpoint=args.s3_endpoint,
        s3_bucket=args.bucket,
        s3_region=args.region,
        presign_seconds=args.presign_seconds,
        connected_seconds=args.connected_seconds,
        max_body_bytes=args.max_body_bytes,
        max_object_bytes=args.max_object_bytes,
        api_docs=args.api_docs,
        raw_retention_seconds=args.raw_retention,
        aggregate_retention_seconds=args.aggregate_retention,
        rollup_interval_seconds=args.rollup_every,
        dashboard_secure_cookie=args.secure_cookies,
    )
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not (1 <= args.port <= 65535):
        raise UserError(f"--port {args.port} is not a TCP port")
    check_workers(args.workers)  # before the banner below: a refused start prints none
    token_from = f"${ADMIN_TOKEN_ENV}" if env_token else token_file
    try:
        database = sqlalchemy.engine.make_url(normalize_url(options.database_url)).render_as_string()
    except sqlalchemy.exc.ArgumentError as exc:
        raise UserError(f"database URL {options.database_url!r} is not usable: {exc}") from None
    workers = f", {args.workers} workers" if args.workers > 1 else ""
    print(
        f"fleet service on http://{args.host}:{args.port} (database {database}{workers}, admin token in {token_from})",
        file=sys.stderr,
        flush=True,
    )
    serve(options, host=args.host, port=args.port, workers=args.workers, log_level=args.log_level)
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

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, *, upload: Path | None = None) -> Any:
        """``body`` as JSON, or the file ``upload`` streamed as the raw body; the decoded answer."""
        import urllib.error
        import urllib.request

        from edgekiln.errors import UserError

        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        if upload is not None:
            headers.update({"Content-Type": "application/octet-stream", "Content-Length": str(upload.stat().st_size)})
        try:
            with open(upload, "rb") if upload is not None else contextlib.nullcontext() as fh:
                request = urllib.request.Request(self.endpoint + path, data=fh or data, method=method, headers=headers)
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read()).get("detail", "")
            except (ValueError, AttributeError):
                detail = exc.reason
            if isinstance(detail, list):  # a 422: which fields, and why
                detail = "; ".join(
                    f"{'.'.join(map(str, d.get('loc', [])[1:]))}: {d.get('msg', '')}"
                    for d in detail
                    if isinstance(d, dict)
                )
            raise UserError(f"fleet service: {method} {path}: {exc.code} {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, ConnectionRefusedError):
                raise UserError(
                    f"no fleet service at {self.endpoint}; pass --endpoint URL of the running service "
                    "(or set EDGEKILN_FLEET_ENDPOINT)"
                ) from None
            raise UserError(f"fleet service at {self.endpoint} unreachable: {reason}") from None

    def upload_benchmarks(
        self, report: dict[str, Any], *, target: str, label: str = "", gate: dict[str, Any] | None = None
    ) -> Any:
        """POST a benchmark report (a BenchReport's dict) and gate verdict to the fleet's
        benchmarks page, without the per-query timings: the fleet keeps p50/p99 and ratios
        only, and a large suite's arrays would outgrow its request size limit."""
        for result in report.get("results", []):
            for subject in result.get("subjects", []):
                for bulky in ("times_ms", "pair_ms"):
                    subject.pop(bulky, None)
        return self.call("POST", "/v1/benchmarks", {"target": target, "label": label, "report": report, "gate": gate})


def admin_token(token_file: str | Path | None) -> str:
    """The fleet's admin token: the file's when one is given, else $EDGEKILN_FLEET_ADMIN_TOKEN."""
    from edgekiln.errors import UserError

    token = os.environ.get(ADMIN_TOKEN_ENV, "")
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise UserError(f"admin token file {token_file}: {exc.strerror}") from None
    if not token:
        raise UserError(f"no admin token: give --admin-token-file FILE or set {ADMIN_TOKEN_ENV} to the token")
    return token


def _admin(args: argparse.Namespace) -> FleetAdmin:
    return FleetAdmin(args.endpoint, admin_token(args.admin_token_file))


def run_client(args: argparse.Namespace) -> int:
    admin = _admin(args)
    command = args.fleet_command
    if command == "device":
        command = args.device_command
        path = f"/v1/devices/{quote(args.fleet, safe='')}/{quote(args.device, safe='')}/{command}"
        body = {"expires_in_seconds": args.expires_in} if command == "rotate" and args.expires_in else None
        result = admin.call("POST", path, body)
    elif command == "register":
        body = {"fleet": args.fleet, "device": args.device, "description": args.description}
        if args.expires_in:
            body["expires_in_seconds"] = args.expires_in
        result = admin.call("POST", "/v1/devices", body)
    elif command == "audit":
        query = {k: v for k, v in (("fleet", args.fleet), ("device", args.device), ("limit", args.limit)) if v}
        result = admin.call("GET", "/v1/audit?" + urlencode(query))
    elif command == "devices":
        result = admin.call("GET", "/v1/devices" + (f"?fleet={args.fleet}" if args.fleet else ""))
    elif command == "describe":
        result = admin.call("GET", f"/v1/devices/{args.fleet}/{args.device}")
    elif command == "captures":
        result = admin.call("GET", f"/v1/devices/{args.fleet}/{args.device}/captures")
    else:
        result = admin.call("GET", f"/v1/fleets/{args.fleet}/report")
    if getattr(args, "token_out", None):
        write_secret(Path(args.token_out), result["token"])
        result = dict(result, token=f"(written to {args.token_out})")
    print(json.dumps(result, indent=2) if args.json else render(command, result))
    return 0


def write_secret(path: Path, value: str) -> None:
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
    if command in ("register", "rotate"):
        expiry = f", expires {_when(result['expires_at'])}" if result.get("expires_at") else ""
        done = "registered" if command == "register" else "new token for"
        return f"{done} {result['fleet']}/{result['device']}; token: {result['token']}{expiry}"
    if command == "revoke":
        return f"revoked the token of {result['fleet']}/{result['device']} (rotate issues a new one)"
    if command == "audit":
        return (
            "\n".join(
                f"{_when(e['at'])}  {e['action']:<12} {e['fleet']}/{e['device']:<24} by {e['actor']}"
                f"{'  ' + e['detail'] if e['detail'] else ''}"
                for e in result["entries"]
            )
            or "no entries"
        )
    if command == "devices":
        rows = [f"{'fleet/device':<32} {'agent':<8} {'connected':<9} last heartbeat"]
        for d in result["devices"]:
            rows.append(
                f"{d['fleet'] + '/' + d['device']:<32} {d['agent_version'] or '-':<8} "
                f"{'yes' if d['connected'] else 'no':<9} {_when(d['last_heartbeat_at'])}"
            )
        return "\n".join(rows)
    if command == "describe":
        return _render_describe(result)
    if command == "captures":
        lines = [f"{len(result['records'])} records in {len(result['batches'])} batches; objects in {result['store']}:"]
        lines += [f"  {o['size']:>9}  {o['key']}" for o in result["objects"]]
        return "\n".join(lines)
    return _render_fleet_stats(result)


def _render_describe(result: dict[str, Any]) -> str:
    """One device: its connection, token, agent metrics, models, captures and faults."""
    m = result["agent_metrics"]
    lines = [
        f"device {result['fleet']}/{result['device']}  agent {result['agent_version'] or '-'}  "
        f"{'connected' if result['connected'] else 'not connected'}, last heartbeat "
        f"{_when(result['last_heartbeat_at'])} ({result['heartbeats_received']} received)"
    ]
    if result.get("revoked_at") is not None:
        lines.append(f"  token revoked {_when(result['revoked_at'])}")
    elif result.get("token_expires_at") is not None:
        lines.append(f"  token expires {_when(result['token_expires_at'])}")
    if result.get("dead_letter_batches"):
        lines.append(
            f"  dead-lettered capture batches (refused by the fleet, kept on the device): "
            f"{result['dead_letter_batches']}"
        )
    if m:
        lines.append(
            f"  cpu {m.get('cpu_percent', 0):.1f}%  rss {m.get('memory_rss_bytes', 0) / 2**20:.1f} MiB  "
            f"uptime {m.get('uptime_seconds', 0):.0f} s  restarts {m.get('restarts', 0):.0f}  "
            f"capture backlog {m.get('capture_backlog_records', 0):.0f}"
        )
        lines.append(
            f"  captures delivered {m.get('captures_delivered', 0):.0f}, rejected "
            f"{m.get('captures_rejected', 0):.0f}, overwritten {m.get('captures_overwritten', 0):.0f}, "
            f"expired {m.get('captures_expired', 0):.0f}"
        )
    for model in result["models"]:
        mm = model["metrics"]
        p50, p99 = mm.get("latency_p50_ms"), mm.get("latency_p99_ms")
        lines.append(
            f"  model {model['model_name']} {model['model_version']}: "
            f"{mm.get('inference_count', 0):.0f} inferences, {mm.get('error_count', 0):.0f} errors, "
            f"p50 {p50 if p50 is not None else float('nan'):.2f} ms, "
            f"p99 {p99 if p99 is not None else float('nan'):.2f} ms, "
            f"last inference {_when(model['latest_inference'])}, "
            f"last sample {_when(model['latest_sample_time'])}"
        )
    c = result["captures"]
    lines.append(f"  captured records in the fleet: {c['records']} in {c['batches']} batches ({c['bytes']} bytes)")
    for fault in result["faults"]:
        lines.append(f"  fault: {fault.get('kind')}: {fault.get('error', '')} {fault.get('moved_to', '')}".rstrip())
    return "\n".join(lines)


def _render_fleet_stats(result: dict[str, Any]) -> str:
    """The fleet's device counts, agent versions and per-model device counts."""
    s = result["device_stats"]
    lines = [
        f"fleet {result['device_fleet_name']}: {s['registered_device_count']} registered, "
        f"{s['connected_device_count']} connected"
    ]
    lines += [f"  agent {v['version']}: {v['agent_count']} devices" for v in result["agent_versions"]]
    for m in result["model_stats"]:
        lines.append(
            f"  model {m['model_name']} {m['model_version']}: connected {m['connected_device_count']}, "
            f"offline {m['offline_device_count']}, active {m['active_device_count']}, "
            f"sampling {m['sampling_device_count']}"
        )
    return "\n".join(lines)

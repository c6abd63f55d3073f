"""Load on the fleet service: N simulated devices over loopback, and the overview at size.

    python benchmarks/fleet_load.py [--devices 100,1000,10000] [--db sqlite,postgres]
        [--duration 60] [--interval 30] [--workers 2] [--overview-devices 10000]
        [--overview-heartbeats 1000000] [--out benchmarks/results/fleet_load.json]

For each database and N, a fresh ``edgekiln fleet serve --workers W`` process (SQLite file, or
Debian's PostgreSQL started in a temp dir; local object store) gets N devices registered in
bulk in its database, then N simulated devices send real HTTP requests for ``--duration``
seconds: one heartbeat every ``--interval`` seconds each (30 s: the edgekiln agent's default
``heartbeat_period_seconds``, as in Edge Manager's agent), at a random phase, with the fields
the agent sends (three agent metrics, one model with four metrics), and every
``--capture-every``-th heartbeat a capture upload as the agent does it (ask for a presigned
URL, PUT a 4 KiB object to it, note the batch).  The devices share a pool of keep-alive
connections.  Reported: heartbeats/s the service acknowledged against the offered rate,
p50/p99 latency per kind of request (send to last byte), requests that failed, and the CPU
seconds of the service (all its workers), of PostgreSQL and of this load generator — they
share the machine's cores.

The overview: ``--overview-devices`` devices with one model each and
``--overview-heartbeats`` stored heartbeats, seeded straight into the database, then
``FleetStore.overview`` timed in this process (the work the dashboard's overview page does
on the server).  Prints a table; writes everything to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devtools.servers import FleetServer, PostgresServer  # noqa: E402
from edgekiln.agents.reporter import build_heartbeat, model_report  # noqa: E402
from edgekiln.execute.statistics import percentile  # noqa: E402
from edgekiln.fleet.store import FleetStore, hash_token  # noqa: E402

FLEET = "load"
AGENT_INTERVAL = 30.0  # edgekiln.agents.config.FleetConfig.heartbeat_period_seconds


# -- HTTP/1.1 over asyncio streams: the least client CPU per request --------------------
class Connection:
    """One keep-alive HTTP/1.1 connection to the service."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, target: str, body: bytes, token: str | None) -> tuple[int, bytes]:
        for attempt in (0, 1):  # the server may have closed an idle connection: reconnect once
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            head = f"{method} {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Length: {len(body)}\r\n"
            if token:
                head += f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            try:
                self.writer.write(head.encode() + b"\r\n" + body)
                return await self._response()
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _response(self) -> tuple[int, bytes]:
        assert self.reader is not None
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    heartbeats: int = 0
    late: int = 0  # sends that waited over a second for a free connection

    def add(self, kind: str, seconds: float, ok: bool) -> None:
        self.latencies.setdefault(kind, []).append(seconds)
        if not ok:
            self.errors[kind] = self.errors.get(kind, 0) + 1


class Load:
    """N devices on a shared connection pool for ``duration`` seconds."""

    def __init__(self, port: int, tokens: list[str], args: argparse.Namespace) -> None:
        self.port = port
        self.tokens = tokens
        self.args = args
        self.tally = Tally()
        self.pool: asyncio.Queue[Connection] = asyncio.Queue()
        for _ in range(min(args.connections, len(tokens))):
            self.pool.put_nowait(Connection("127.0.0.1", port))

    async def call(self, kind: str, method: str, target: str, body: bytes, token: str | None) -> bytes | None:
        queued = time.perf_counter()
        conn = await self.pool.get()
        start = time.perf_counter()
        if start - queued > 1.0:
            self.tally.late += 1
        try:
            status, answer = await conn.request(method, target, body, token)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            status, answer = 0, b""
            conn.close()
        finally:
            self.pool.put_nowait(conn)
        self.tally.add(kind, time.perf_counter() - start, 200 <= status < 300)
        return answer if 200 <= status < 300 else None

    async def device(self, index: int, token: str, stop_at: float) -> None:
        name = f"dev-{index:05d}"
        await asyncio.sleep(random.uniform(0, self.args.interval))
        beat = 0
        while time.perf_counter() < stop_at:
            due = time.perf_counter() + self.args.interval
            beat += 1
            answer = await self.call("heartbeat", "POST", "/v1/agent/heartbeats", _heartbeat(name), token)
            if answer is not None:
                self.tally.heartbeats += json.loads(answer)["accepted"]
            if self.args.capture_every and beat % self.args.capture_every == index % self.args.capture_every:
                await self.capture(token, f"{beat:06d}")
            await asyncio.sleep(max(0.0, min(due, stop_at) - time.perf_counter()))

    async def capture(self, token: str, batch: str) -> None:
        key = f"cls/{batch}.jpg"
        answer = await self.call("upload-url", "POST", "/v1/agent/uploads", json.dumps({"keys": [key]}).encode(), token)
        if answer is None:
            return
        url = json.loads(answer)["urls"][key]
        target = url.split(f":{self.port}", 1)[1]
        if await self.call("put-object", "PUT", target, os.urandom(4096), None) is None:
            return
        body = {"key": key, "objects": [key], "bytes": 4096, "records": [{"record_id": uuid.uuid4().hex}]}
        await self.call("capture", "POST", "/v1/agent/captures", json.dumps(body).encode(), token)

    async def run(self) -> float:
        start = time.perf_counter()
        stop_at = start + self.args.duration
        await asyncio.gather(*(self.device(i, t, stop_at) for i, t in enumerate(self.tokens)))
        return time.perf_counter() - start


def _heartbeat(name: str) -> bytes:
    """One heartbeat as the agent builds it (edgekiln.agents.reporter)."""
    now = time.time()
    snapshot = {"inference_count": 1200, "error_count": 0, "latency_p50_ms": 8.5, "latency_p99_ms": 21.0}
    hb = build_heartbeat(
        device=name,
        fleet=FLEET,
        agent_version="0.1.0",
        now=now,
        agent={"cpu_percent": 12.5, "memory_rss_bytes": 48_000_000, "uptime_seconds": 3600.0},
        models=[model_report("cls", "1", snapshot, now)],
        faults=[],
    )
    return json.dumps({"heartbeats": [hb.to_json()]}, separators=(",", ":")).encode()


# -- seeding straight into the database ---------------------------------------------------
def seed_devices(store: FleetStore, count: int, now: float) -> list[str]:
    """Register ``count`` devices in one transaction; their tokens."""
    tokens = [secrets.token_urlsafe(32) for _ in range(count)]
    rows = [
        {"fleet": FLEET, "name": f"dev-{i:05d}", "description": "", "token_hash": hash_token(t), "registered_at": now}
        for i, t in enumerate(tokens)
    ]
    with store.engine.begin() as conn:
        conn.execute(store.devices.insert(), rows)
    return tokens


def seed_history(store: FleetStore, devices: int, heartbeats: int, now: float) -> float:
    """``heartbeats`` stored heartbeats spread over ``devices`` devices (30 s apart, ending
    now), each device's model row and last heartbeat; returns the seconds it took."""
    import sqlalchemy as sa

    started = time.perf_counter()
    seed_devices(store, devices, now)
    body = _heartbeat("dev-00000").decode()[len('{"heartbeats":[') : -2]
    with store.engine.begin() as conn:
        ids = [r[0] for r in conn.execute(sa.select(store.devices.c.id).order_by(store.devices.c.id))]
        conn.execute(
            store.device_models.insert(),
            [
                {
                    "device_id": d,
                    "model_name": "cls",
                    "model_version": str(1 + d % 3),
                    "metrics": "{}",
                    "reported_at": now,
                }
                for d in ids
            ],
        )
        # Two thirds of the devices online, with an agent version; the rest silent for an hour.
        for offset, chunk in ((0, ids[: len(ids) * 2 // 3]), (3600, ids[len(ids) * 2 // 3 :])):
            conn.execute(
                store.devices.update()
                .where(store.devices.c.id.in_(chunk))
                .values(last_heartbeat_at=now - offset, agent_version="0.1.0")
            )
    rows = ((ids[i % len(ids)], uuid.uuid4().hex, now - 30 * (i // len(ids))) for i in range(heartbeats))
    if store.engine.dialect.name == "postgresql":
        raw = store.engine.raw_connection()
        try:
            with (
                raw.cursor() as cur,
                cur.copy("COPY heartbeats (device_id, heartbeat_id, sent_at, received_at, body) FROM STDIN") as copy,
            ):
                for device_id, hid, at in rows:
                    copy.write_row((device_id, hid, at, at, body))
            raw.commit()
        finally:
            raw.close()
    else:
        batch: list[dict[str, Any]] = []
        with store.engine.begin() as conn:
            for device_id, hid, at in rows:
                batch.append(
                    {"device_id": device_id, "heartbeat_id": hid, "sent_at": at, "received_at": at, "body": body}
                )
                if len(batch) == 20000:
                    conn.execute(store.heartbeats.insert(), batch)
                    batch = []
            if batch:
                conn.execute(store.heartbeats.insert(), batch)
    with store.engine.begin() as conn:
        if store.engine.dialect.name == "postgresql":
            conn.execute(sa.text("ANALYZE"))
    return time.perf_counter() - started


# -- CPU accounting from /proc -----------------------------------------------------------
def _cpu_seconds(pids: set[int], root: int) -> float:
    """CPU seconds of ``pids``, and of the children ``root`` has reaped (PostgreSQL's
    backends of closed connections, for one)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        if pid == root:
            total += (int(fields[13]) + int(fields[14])) / tick  # cutime, cstime
    return total


def _tree(root: int) -> set[int]:
    """``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


def _postmaster(pg: PostgresServer | None) -> int | None:
    if pg is None or pg.root is None:
        return None
    return int((pg.root / "data" / "postmaster.pid").read_text().split()[0])


# -- one run -----------------------------------------------------------------------------
def load_run(db: str, n: int, args: argparse.Namespace, workdir: Path, pg: PostgresServer | None) -> dict[str, Any]:
    url = pg.url if pg else f"sqlite:///{workdir / f'fleet-{n}.db'}"
    if pg:
        _reset(url)
    store = FleetStore(url)
    store.create_schema()
    tokens = seed_devices(store, n, time.time())
    store.close()
    server = FleetServer(
        workdir / f"{db}-{n}", db_url=url, extra_args=("--workers", str(args.workers), "--rollup-every", "0")
    )
    server.start()
    try:
        assert server.process is not None and server.port is not None
        root, pm = server.process.pid, _postmaster(pg) or -1
        before = (_cpu_seconds(_tree(root), root), _cpu_seconds(_tree(pm), pm), os.times())
        load = Load(server.port, tokens, args)
        wall = asyncio.run(load.run())
        after = (_cpu_seconds(_tree(root), root), _cpu_seconds(_tree(pm), pm), os.times())
    finally:
        server.stop()
    t = load.tally
    load_cpu = (after[2].user + after[2].system) - (before[2].user + before[2].system)
    result: dict[str, Any] = {
        "db": db,
        "devices": n,
        "interval_s": args.interval,
        "duration_s": round(wall, 1),
        "offered_heartbeats_per_s": round(n / args.interval, 1),
        # Sends start within the first `duration` seconds; the last answers may come later.
        "heartbeats_per_s": round(t.heartbeats / args.duration, 1),
        "heartbeats": t.heartbeats,
        "late_sends": t.late,
        # The machine's 1-minute load average as the run ended (other work included).
        "loadavg_1min": float(Path("/proc/loadavg").read_text().split()[0]),
        "errors": t.errors,
        "cpu_percent": {
            "service": round(100 * (after[0] - before[0]) / wall, 1),
            "postgres": round(100 * (after[1] - before[1]) / wall, 1) if pg else None,
            "load_generator": round(100 * load_cpu / wall, 1),
        },
        "latency_ms": {
            kind: {
                "count": len(v),
                "p50": round(1000 * percentile(v, 50), 1),
                "p99": round(1000 * percentile(v, 99), 1),
            }
            for kind, v in sorted(t.latencies.items())
        },
    }
    return result


def _reset(url: str) -> None:
    """An empty fleet database on the PostgreSQL server: each run starts from nothing."""
    import sqlalchemy as sa

    from edgekiln.fleet.database import normalize_url

    engine = sa.create_engine(normalize_url(url))
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    engine.dispose()


def overview_run(db: str, args: argparse.Namespace, workdir: Path, pg: PostgresServer | None) -> dict[str, Any]:
    url = pg.url if pg else f"sqlite:///{workdir / 'overview.db'}"
    if pg:
        _reset(url)
    store = FleetStore(url)
    store.create_schema()
    now = time.time()
    seeded = seed_history(store, args.overview_devices, args.overview_heartbeats, now)
    times = []
    for _ in range(args.overview_repeats):
        started = time.perf_counter()
        rows = store.overview(now=now, connected_seconds=120.0)
        json.dumps(rows)
        times.append(time.perf_counter() - started)
    online = sum(r["online"] for r in rows)
    rolled = _time_rollup(store, now) if args.rollup else None
    store.close()
    return {
        "rollup": rolled,
        "db": db,
        "devices": args.overview_devices,
        "stored_heartbeats": args.overview_heartbeats,
        "seed_s": round(seeded, 1),
        "rows": len(rows),
        "online": online,
        "overview_ms": {"median": round(1000 * statistics.median(times), 1), "max": round(1000 * max(times), 1)},
    }


def _time_rollup(store: FleetStore, now: float) -> dict[str, Any]:
    """Roll up every seeded heartbeat (as a day later): how long, and the rows before and after."""
    import sqlalchemy as sa

    from edgekiln.fleet import rollup

    def rows() -> dict[str, int]:
        tables = (store.heartbeats, store.heartbeat_minutes)
        with store.engine.connect() as conn:
            counts = {t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar() for t in tables}
        if store.engine.dialect.name == "postgresql":  # live bytes, indexes included, after a VACUUM
            with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(sa.text("VACUUM FULL"))
                for t in tables:
                    size = conn.execute(sa.text("SELECT pg_total_relation_size(:t)"), {"t": t.name}).scalar()
                    counts[f"{t.name}_mib"] = round(size / 2**20, 1)
        return counts

    before = rows()
    started = time.perf_counter()
    result = rollup.roll_up(store, now + 2 * 86400, raw_retention_seconds=86400)
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "folded": result.heartbeats,
        "rows_before": before,
        "rows_after": rows(),
    }


# -- report ------------------------------------------------------------------------------
def table(results: dict[str, Any]) -> str:
    lines = [
        f"{'db':<9}{'devices':>8}{'offered/s':>10}{'hb/s':>8}{'hb p50':>8}{'hb p99':>8}{'cap p99':>8}"
        f"{'errors':>7}{'late':>6}{'cpu svc':>8}{'cpu pg':>7}{'cpu gen':>8}",
    ]
    for r in results["load"]:
        hb = r["latency_ms"].get("heartbeat", {"p50": 0, "p99": 0})
        cap = max((v["p99"] for k, v in r["latency_ms"].items() if k != "heartbeat"), default=0.0)
        cpu = r["cpu_percent"]
        lines.append(
            f"{r['db']:<9}{r['devices']:>8}{r['offered_heartbeats_per_s']:>10}{r['heartbeats_per_s']:>8}"
            f"{hb['p50']:>8}{hb['p99']:>8}{cap:>8}{sum(r['errors'].values()):>7}{r['late_sends']:>6}"
            f"{cpu['service']:>7}%{(cpu['postgres'] or 0):>6}%{cpu['load_generator']:>7}%"
        )
    for o in results["overview"]:
        lines.append(
            f"overview {o['db']}: {o['devices']} devices, {o['stored_heartbeats']} heartbeats: "
            f"median {o['overview_ms']['median']} ms, max {o['overview_ms']['max']} ms ({o['rows']} rows)"
        )
        if o["rollup"]:
            r = o["rollup"]
            lines.append(f"  roll-up of {r['folded']} heartbeats: {r['seconds']} s; rows after: {r['rows_after']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", default="100,1000,10000", help="device counts, comma separated")
    parser.add_argument("--db", default="sqlite,postgres", help="databases: sqlite, postgres")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load per run (default: 60)")
    parser.add_argument("--interval", type=float, default=AGENT_INTERVAL, help="heartbeat period (default: 30)")
    parser.add_argument("--capture-every", type=int, default=10, help="a capture upload every N heartbeats (0: none)")
    parser.add_argument("--workers", type=int, default=2, help="fleet serve --workers (default: 2)")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections shared by the devices")
    parser.add_argument("--overview-devices", type=int, default=10000)
    parser.add_argument("--overview-heartbeats", type=int, default=1_000_000, help="0 skips the overview")
    parser.add_argument("--overview-repeats", type=int, default=5)
    parser.add_argument("--rollup", action="store_true", help="then time rolling up every stored heartbeat")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fleet_load.json")
    args = parser.parse_args(argv)
    counts = [int(x) for x in args.devices.split(",") if x]
    dbs = [x for x in args.db.split(",") if x]
    if not set(dbs) <= {"sqlite", "postgres"}:
        parser.error("--db takes sqlite and/or postgres")
    results: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "cpus": os.cpu_count(),
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
        "load": [],
        "overview": [],
    }
    with tempfile.TemporaryDirectory(prefix="ek-fleet-load-") as tmp:
        for db in dbs:
            pg = PostgresServer().start() if db == "postgres" else None
            try:
                for n in counts:
                    results["load"].append(load_run(db, n, args, Path(tmp), pg))
                    print(json.dumps(results["load"][-1]), file=sys.stderr, flush=True)
                if args.overview_heartbeats:
                    results["overview"].append(overview_run(db, args, Path(tmp), pg))
                    print(json.dumps(results["overview"][-1]), file=sys.stderr, flush=True)
            finally:
                if pg:
                    pg.stop()
    results["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

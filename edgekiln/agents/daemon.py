"""The agent daemon: the local API plus one supervised loop that reports and delivers.

Shape (after huey's consumer): gRPC worker threads answer the local API; the main
thread runs one loop that waits on an event with a timeout and, when woken, runs the
tasks that are due — queue a heartbeat, send queued messages, form and deliver capture
batches, expire records past their TTL.  Each task is supervised: an exception is logged,
counted and retried later with back-off; it never stops the loop or the API.  Signal
handlers only set flags (SIGTERM/SIGINT: stop; SIGUSR1: deliver now); the loop notices
them within ``POLL_SECONDS``.  Every time the loop reads comes from an injectable clock:
tasks are scheduled on its monotonic time, because a board without a real-time clock
jumps its wall clock at boot (a jump back would stall every task until the wall clock
caught up); wall time only stamps what is sent and stored.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgekiln import __version__
from edgekiln.agents.config import AgentConfig
from edgekiln.errors import UserError

log = logging.getLogger(__name__)

# Longest the loop sleeps before looking at the signal flags again.
POLL_SECONDS = 0.25
MAINTENANCE_SECONDS = 60.0
MIN_BACKOFF = 0.5
# Heartbeats per POST; halved while the fleet answers 413 (its limit per request).
HEARTBEATS_PER_POST = 50


class Clock:
    """Wall time for what is stamped and stored, monotonic time for scheduling; replace in tests."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


@dataclass
class _Task:
    name: str
    due: float = 0.0
    failures: int = 0


class Agent:
    """One agent: build it from a config, ``start()``, then ``run()`` (or ``step()``)."""

    def __init__(
        self, config: AgentConfig, *, clock: Clock | None = None, model_loader: Callable[[str], Any] | None = None
    ) -> None:
        self.config = config
        self.clock = clock or Clock()
        self._model_loader = model_loader
        self.state_dir = Path(config.agent.state_dir)
        self._wake = threading.Event()
        self._stop_flag = False
        self._flush_flag = False
        self._server: Any = None
        self._tasks = {name: _Task(name) for name in ("heartbeat", "messages", "batches", "maintenance")}
        self.outbox: Any = None
        self.registry: Any = None
        self.capture: Any = None
        self.sink: Any = None
        self.client: Any = None
        self.process: Any = None
        self.deployments: Any = None
        self.restarts = 0
        self.unclean_restarts = 0
        self._reported_faults = 0
        self.task_errors = 0
        self._heartbeats_per_post = HEARTBEATS_PER_POST
        self._one_by_one_until: int | None = None  # after a refused POST: find the refused one
        self.started = False
        self._lock_file: Any = None

    # -- start and stop --------------------------------------------------------------
    def start(self) -> None:
        """Open the store, reload the models loaded before, and serve the local API."""
        from edgekiln.agents.capture import CaptureService
        from edgekiln.agents.deploy.manager import DeployManager
        from edgekiln.agents.outbox import Outbox
        from edgekiln.agents.registry import ModelRegistry
        from edgekiln.agents.reporter import CloudSink, DiskSink, FleetClient, ProcessMetrics
        from edgekiln.agents.server import serve
        from edgekiln.agents.servicer import AgentServicer

        cfg = self.config
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._note_start()
        now = self.clock.time
        self.process = ProcessMetrics()
        self.outbox = Outbox(
            self.state_dir / "outbox",
            storage_limit_bytes=cfg.capture.storage_limit_bytes,
            max_records=cfg.capture.buffer_size,
            full_policy=cfg.capture.full_policy,
            ttl_seconds=cfg.capture.ttl_seconds,
            quarantine_dir=self.state_dir / "corrupt",
            clock=now,
            durable=cfg.capture.sync_writes,
        )
        self.outbox.open()
        self.registry = ModelRegistry(
            cfg.agent.model_dir,
            self.state_dir / "models.json",
            max_models=cfg.agent.max_models,
            clock=now,
            loader=self._model_loader,
            work_dir=self._fresh_work_dir(),
            model_dirs=cfg.agent.allowed_model_dirs,
        )
        self.capture = CaptureService(self.outbox, clock=now, on_sample=self._on_sample)
        if cfg.fleet.endpoint:
            self.client = FleetClient(cfg.fleet.endpoint, cfg.fleet.token, cfg.fleet.request_timeout_seconds)
        else:
            del self._tasks["messages"]  # nowhere to send them: heartbeats stay in the outbox
        if cfg.capture.destination == "Cloud":
            self.sink = CloudSink(self.client)
        else:
            self.sink = DiskSink(cfg.capture.disk_path, cfg.device.fleet, cfg.device.name)
        self._reload_saved(now)
        self.deployments = DeployManager(cfg, self.registry, client=self.client, clock=now, on_result=self._report_soon)
        self.deployments.start()
        self._server = serve(
            cfg.agent.socket, AgentServicer(self.registry, self.capture, cfg.tuning), max_workers=cfg.agent.max_workers
        )
        self.started = True
        log.info("agent %s/%s serving on %s", cfg.device.fleet, cfg.device.name, cfg.agent.socket)

    def _reload_saved(self, now: Callable[[], float]) -> None:
        from edgekiln.agents.registry import ModelLoadError

        for saved in self.registry.saved():
            try:
                self.registry.load(saved["name"], saved["url"])
            except ModelLoadError as exc:
                # A model that loaded before and does not now is a fault to report, not a reason to stop.
                self.outbox.faults.append(
                    {"kind": "model-reload", "model": saved["name"], "error": exc.message, "time": now()}
                )
                log.error("could not reload model %s: %s", saved["name"], exc.message)

    def _report_soon(self) -> None:
        """A deployment ended: its result goes out with the next heartbeat, queued now."""
        self._tasks["heartbeat"].due = 0.0
        self._wake.set()

    def _note_start(self) -> None:
        """Take the state directory and count starts and unclean stops (the running marker
        outlives a killed agent; the lock does not, the kernel drops it)."""
        import fcntl

        lock = open(self.state_dir / "lock", "a+")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise UserError(f"another agent is using the state directory {self.state_dir}") from None
        self._lock_file = lock
        path = self.state_dir / "agent-state.json"
        marker = self.state_dir / "running"
        try:
            state = json.loads(path.read_text()) if path.is_file() else {}
        except ValueError:
            state = {}
        state["starts"] = int(state.get("starts", 0)) + 1
        if marker.exists():
            state["unclean_stops"] = int(state.get("unclean_stops", 0)) + 1
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)
        marker.write_text(str(os.getpid()))
        self.restarts = state["starts"] - 1
        self.unclean_restarts = int(state.get("unclean_stops", 0))

    def _fresh_work_dir(self) -> Path:
        """The model workers' directory (artifacts extract there), emptied at start: a
        killed agent or worker leaves its extracted models behind."""
        import shutil

        work = self.state_dir / "work"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(mode=0o700)
        return work

    def stop(self, grace: float = 5.0) -> None:
        """Stop serving and close the store (run() made the last delivery attempt)."""
        self.started = False
        if self.deployments is not None:
            self.deployments.stop()
            self.deployments = None
        if self._server is not None:
            self._server.stop(grace).wait(grace + 1)
            self._server = None
            try:
                Path(self.config.agent.socket).unlink(missing_ok=True)
            except OSError:
                pass
        try:
            if self.registry is not None:
                self.registry.close()
            if self.outbox is not None:
                self.outbox.close()
        finally:
            if self._lock_file is not None:  # only the agent that holds the directory clears it
                (self.state_dir / "running").unlink(missing_ok=True)
                self._lock_file.close()
                self._lock_file = None
        log.info("agent stopped")

    # -- signals ---------------------------------------------------------------------
    def request_stop(self, *_: Any) -> None:
        # Called from signal handlers: only set flags. The loop polls them.
        self._stop_flag = True

    def request_flush(self, *_: Any) -> None:
        self._flush_flag = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGUSR1, self.request_flush)

    # -- the loop --------------------------------------------------------------------
    def run(self) -> None:
        """The supervised loop; returns after a stop was requested."""
        if threading.current_thread() is threading.main_thread():
            self.install_signal_handlers()
        while not self._stop_flag:
            wait = self.step()
            self._wake.wait(timeout=max(0.0, min(wait, POLL_SECONDS)))
            self._wake.clear()
        # A last attempt to hand over what is queued; whatever fails stays for the next start.
        if "messages" in self._tasks:
            self._run_task("messages", self._send_messages, force=True)

    def step(self) -> float:
        """Run every due task once; returns seconds until the next one is due."""
        now = self.clock.monotonic()
        cfg = self.config
        if self._flush_flag:
            self._flush_flag = False
            if self.deployments is not None:
                self.deployments.wake()
            for task in self._tasks.values():
                task.due = min(task.due, now)
        # Often enough that records expire within a quarter of their TTL.
        self._run_task("maintenance", self._maintain, period=min(MAINTENANCE_SECONDS, cfg.capture.ttl_seconds / 4))
        if self._tasks["heartbeat"].due <= now or self.outbox.faults[self._reported_faults :]:
            self._run_task("heartbeat", self.queue_heartbeat, period=cfg.fleet.heartbeat_period_seconds, force=True)
        if "messages" in self._tasks:
            self._run_task("messages", self._send_messages, period=cfg.fleet.heartbeat_period_seconds)
        self._run_task("batches", self._deliver_batches, period=cfg.capture.push_period_seconds)
        now = self.clock.monotonic()
        return max(0.0, min(t.due for t in self._tasks.values()) - now)

    def _run_task(self, name: str, fn: Callable[[], bool | None], *, period: float = 0.0, force: bool = False) -> None:
        task = self._tasks[name]
        now = self.clock.monotonic()
        if not force and task.due > now:
            return
        from edgekiln.agents.reporter import FleetRejected, FleetUnavailable

        try:
            more = fn()
        except (FleetUnavailable, FleetRejected) as exc:
            task.failures += 1
            backoff = min(self.config.fleet.retry_max_seconds, MIN_BACKOFF * 2 ** min(task.failures - 1, 16))
            task.due = self.clock.monotonic() + backoff
            log.info("%s: %s (retry in %.1f s)", name, exc.message, backoff)
            return
        except Exception:  # supervised: log, count, back off, carry on
            self.task_errors += 1
            task.failures += 1
            task.due = self.clock.monotonic() + min(
                self.config.fleet.retry_max_seconds, MIN_BACKOFF * 2 ** min(task.failures - 1, 16)
            )
            log.exception("agent task %s failed", name)
            return
        task.failures = 0
        # A task with more work left runs again at once; otherwise after its period.
        task.due = now if more else now + period

    # -- tasks -----------------------------------------------------------------------
    def queue_heartbeat(self) -> bool:
        """Put a heartbeat with the current metrics in the outbox."""
        from edgekiln.agents.reporter import build_heartbeat

        now = self.clock.time()
        faults = list(self.outbox.faults[self._reported_faults :])
        heartbeat = build_heartbeat(
            device=self.config.device.name,
            fleet=self.config.device.fleet,
            agent_version=__version__,
            now=now,
            agent=self._agent_metrics(),
            models=self.registry.snapshots(now),
            faults=faults,
        )
        body = heartbeat.to_json()
        results = self.deployments.results() if self.deployments is not None and self.client is not None else []
        if results:  # re-sent in every heartbeat until one that carries them is accepted
            body["deployment_results"] = results
        self.outbox.put_message("heartbeat", body)
        self._reported_faults += len(faults)
        return False

    def _agent_metrics(self) -> dict[str, Any]:
        backlog = self.outbox.backlog()
        counters = self.outbox.counters()
        agent = dict(self.process.snapshot())
        agent.update(
            {
                "restarts": self.restarts,
                "unclean_restarts": self.unclean_restarts,
                "capture_backlog_records": backlog["records_ready"] + backlog["records_in_flight"],
                "capture_backlog_bytes": backlog["bytes"],
                "capture_store_bytes": backlog["usage_bytes"],
                "capture_store_limit_bytes": backlog["limit_bytes"],
                "queued_messages": backlog["messages"],
                "captures_delivered": counters.get("delivered", 0),
                "captures_rejected": counters.get("rejected", 0),
                "captures_overwritten": counters.get("overwritten", 0),
                "captures_expired": counters.get("expired", 0),
                "captures_lost": counters.get("lost", 0),
                "captures_quarantined": counters.get("quarantined", 0),
                "quarantine_bytes": self.outbox.quarantine_bytes(),
                "dead_letter_batches": counters.get("dead_letter_batches", 0),
                "dead_letter_records": counters.get("dead_letter_records", 0),
                "heartbeats_dropped": counters.get("heartbeats_dropped", 0),
                "heartbeats_refused": counters.get("heartbeats_refused", 0),
                "models_loaded": len(self.registry.list()),
                "predict_concurrency_max": self.registry.max_running,
                "task_errors": self.task_errors,
            }
        )
        return agent

    def _send_messages(self) -> bool:
        from edgekiln.agents.reporter import FleetRejected

        if self.client is None:
            return False
        limit = 1 if self._one_by_one_until is not None else self._heartbeats_per_post
        batch = self.outbox.take_messages("heartbeat", limit=limit)
        if not batch:
            return False
        if self._one_by_one_until is not None and batch[-1].id >= self._one_by_one_until:
            self._one_by_one_until = None
        try:
            self.client.post("/v1/agent/heartbeats", {"heartbeats": [m.body for m in batch]})
        except FleetRejected as exc:
            if not _refused_for_good(exc):
                raise
            if len(batch) > 1:
                if exc.status == 413:  # too many for one request: fewer at a time
                    self._heartbeats_per_post = max(1, len(batch) // 2)
                else:  # one of them is refused: send these one by one to find it
                    self._one_by_one_until = batch[-1].id
                return True
            # Sending it again would be refused again and hold back every later heartbeat.
            log.error("the fleet refused a heartbeat (%s); dropped", exc.message)
            self.outbox.drop_messages([batch[0].id], "heartbeat")
            return True
        self.outbox.ack_messages(m.id for m in batch)
        if self.deployments is not None:
            for message in batch:
                if isinstance(message.body, dict) and message.body.get("deployment_results"):
                    self.deployments.reported(message.body["deployment_results"])
        return True

    def _deliver_batches(self) -> bool:
        from edgekiln.agents.capture import encode_batch
        from edgekiln.agents.reporter import FleetRejected

        cfg = self.config.capture
        flush_after = cfg.periodic_upload_period_seconds if cfg.periodic_upload else None
        if self.sink is None or (cfg.destination == "Cloud" and self.client is None):
            return False
        # One batch in flight at a time: in-flight records cannot be overwritten (they may be
        # in S3 already), so while offline they must stay few; the rest remain ready.
        pending = self.outbox.pending_batches(limit=1)
        if not pending:
            self.outbox.form_batches(cfg.batch_size, flush_after=flush_after, max_batches=1)
            pending = self.outbox.pending_batches(limit=1)
        for batch in pending:
            encoded = encode_batch(
                batch,
                self.outbox.read_record,
                fleet=self.config.device.fleet,
                device=self.config.device.name,
                embed_limit=cfg.base64_embed_limit,
            )
            if encoded.missing:
                self.outbox.drop_records(encoded.missing, "missing")
            if encoded.record_ids:
                try:
                    self.sink.deliver(encoded, {rid: batch.model for rid in encoded.record_ids})
                except FleetRejected as exc:
                    if not _refused_for_good(exc):
                        raise
                    # Retrying would be refused again and hold back every later capture.
                    self.outbox.dead_letter_batch(batch.batch_id, exc.message)
                    continue
            self.outbox.ack_batch(batch.batch_id)
        return bool(pending)

    def _maintain(self) -> bool:
        self.outbox.check()
        self.outbox.expire()
        self.outbox.prune()
        return False

    def _on_sample(self, model: str, now: float) -> None:
        self.registry.note_sample(model, now)


def _refused_for_good(exc: Any) -> bool:
    """A 4xx that the same request will get again; 401 waits for a rotated token."""
    return exc.status not in (401, 408, 429)


def run_agent(config: AgentConfig) -> int:
    """``edgekiln agent``: start, loop until SIGTERM/SIGINT, stop."""
    agent = Agent(config)
    try:
        agent.start()
    except OSError as exc:
        agent.stop()
        raise UserError(f"agent cannot start: {exc}") from None
    except BaseException:
        agent.stop()
        raise
    try:
        agent.run()
    finally:
        agent.stop()
    return 0

"""The deployment manager: one thread that takes deployments and installs them.

Each deployment goes through the install steps in order, and the step it reached is
written to the deployment log before the step's work starts, so that an agent killed at
any point resumes where it was:

``download``  into staging, resuming with Range (local installs start at ``verify``)
``verify``    signature by a trusted key, expiry, every member's size and sha256, the
              handle and version the deployment names, anti-rollback, and that the
              artifact can run on this device; the verified artifact is written to staging
``unpack``    into a new slot, published by a rename once complete
``switch``    the ``current`` pointer moves to the new slot
``health``    the new version loads in a worker of its own and passes the health gate,
              while the committed version keeps answering Predict
``commit``    the new version replaces the old one in the registry in one step, the
              version floor rises, the ``committed`` pointer follows

A failure before ``switch`` leaves everything as it was (FAILED). From ``switch`` on, under
ROLLBACK_ON_FAILURE the ``current`` pointer goes back to the committed slot (ROLLED_BACK,
with the seconds it took; FAILED_UNABLE_TO_ROLLBACK when the old version cannot serve
again); under DO_NOTHING a version that loads is kept and serves (FAILED). An agent that
starts 3 times while a trial is open (a crash loop) fails the trial. Nothing here needs
the network after the download.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from edgekiln.agents.deploy.download import DownloadInterrupted, download
from edgekiln.agents.deploy.faults import checkpoint
from edgekiln.agents.deploy.health import check_health, recorded_reference
from edgekiln.agents.deploy.slots import Slots
from edgekiln.agents.deploy.spec import MAX_DEPLOYMENTS, STEPS, Deployment, from_fleet, heartbeat_result
from edgekiln.agents.deploy.store import FINAL, DeploymentLog, VersionFloor, log_path
from edgekiln.errors import EdgekilnError, UserError

log = logging.getLogger(__name__)

CRASH_LOOP_STARTS = 3
# Download attempts in a row that bring no byte before the deployment waits for the next round.
MAX_STALLED_TRIES = 4
INBOX_SUFFIX = ".pkg"


class Failed(Exception):
    """An install step failed for good: the deployment ends with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = " ".join(reason.split())[:500]


class DeployManager:
    """Installs deployments for one agent; ``start()`` recovers, the thread does the rest."""

    def __init__(
        self,
        config: Any,
        registry: Any,
        *,
        client: Any = None,
        clock: Callable[[], float] = time.time,
        on_result: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.deploy = config.deploy
        self.registry = registry
        self.client = client
        self.clock = clock
        log_file = log_path(config.agent.state_dir)
        self.slots_dir, self.staging, self.inbox = self.deploy.dirs(Path(config.agent.state_dir))
        for directory in (log_file.parent, self.slots_dir, self.staging, self.inbox):
            directory.mkdir(parents=True, exist_ok=True)
        self.slots = Slots(self.slots_dir)
        self.log = DeploymentLog(log_file)
        self.floor = VersionFloor(log_file.parent / "versions.json")
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._trials: dict[str, Any] = {}  # deployment id -> the new version's model worker
        self.period = self.deploy.poll_period_seconds or config.fleet.heartbeat_period_seconds
        self.on_result = on_result  # a result to report: the agent sends a heartbeat soon

    # -- start, stop, wake ------------------------------------------------------------
    def start(self) -> None:
        """Serve every handle's committed version, count crash-loop starts, start the thread."""
        open_trials = {r["spec"]["handle"]: r for r in self.log.all() if r.get("status") == "DEPLOYING" and "spec" in r}
        for handle in self.slots.handles():
            self._recover_handle(handle, open_trials.get(handle))
        self._thread = threading.Thread(target=self._run, name="deployments", daemon=True)
        self._thread.start()

    def _recover_handle(self, handle: str, record: dict[str, Any] | None) -> None:
        committed = self.slots.pointer(handle, "committed")
        current = self.slots.pointer(handle, "current")
        if committed is not None:
            try:
                self._serve(handle, committed)
            except EdgekilnError as exc:
                log.error("cannot serve %s v%s: %s", handle, committed, exc.one_line())
        trial_open = current is not None and current != committed
        if record is not None and STEPS.index(record.get("step", "download")) >= STEPS.index("switch"):
            trial_open = True
        if not trial_open:
            self.slots.clean(handle, keep=set() if committed is None else {committed})
            return
        if record is None:  # a trial no deployment owns any more: undo it
            self.slots.set_pointer(handle, "current", committed)
            return
        starts = int(record.get("starts", 1)) + 1
        self.log.update(record["deployment_id"], starts=starts)
        if starts >= CRASH_LOOP_STARTS:
            spec = Deployment.from_dict(record["spec"])
            self._fail(spec, f"crash loop: {starts} agent starts without a commit", "health")

    def stop(self, timeout: float = 10.0) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for deployment_id in list(self._trials):
            _close(self._trials.pop(deployment_id))

    def wake(self) -> None:
        self._wake.set()

    # -- the thread -------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop:
            try:
                self.poll()
                self.take_inbox()
                self.process_pending()
            except Exception:  # supervised: a bug here must not end deployments for good
                log.exception("deployment loop failed")
            self._wake.wait(self.period)
            self._wake.clear()

    def poll(self) -> None:
        """Take on the deployments the fleet lists that this device has not seen."""
        if self.client is None:
            return
        from edgekiln.agents.reporter import FleetRejected, FleetUnavailable

        try:
            answer = self.client.get("/v1/agent/deployments")
        except (FleetUnavailable, FleetRejected) as exc:
            log.info("deployments: %s", exc.message)
            return
        items = answer.get("deployments")
        if not isinstance(items, list):
            log.warning("deployments: the fleet's answer holds no list")
            return
        for item in items[:MAX_DEPLOYMENTS]:
            self._accept(item)

    def _accept(self, item: Any) -> None:
        try:
            spec = from_fleet(item, self.deploy.max_package_bytes)
        except UserError as exc:
            deployment_id = item.get("deployment_id") if isinstance(item, dict) else None
            if isinstance(deployment_id, str) and 0 < len(deployment_id) <= 256 and not self.log.get(deployment_id):
                self.log.update(
                    deployment_id, spec={}, status="FAILED", reason=f"malformed deployment: {exc.message}",
                    updated_at=self.clock(),
                )  # fmt: skip
            return
        if self.log.get(spec.deployment_id) is None:  # a repeated id is done or under way: idempotent
            self._begin(spec, "download")

    def _begin(self, spec: Deployment, step: str) -> None:
        self.log.update(
            spec.deployment_id, spec=spec.to_dict(), status="DEPLOYING", step=step, reason="accepted",
            received_at=self.clock(), updated_at=self.clock(),
        )  # fmt: skip
        log.info("deployment %s: %s v%s", spec.deployment_id, spec.handle, spec.version)

    def take_inbox(self) -> None:
        """Local installs: each ``*.pkg`` in the inbox becomes a deployment ``local:<sha16>``."""
        from edgekiln.artifact.package import sha256_file
        from edgekiln.artifact.signing import read_package_manifest

        for path in sorted(self.inbox.glob(f"*{INBOX_SUFFIX}"))[:MAX_DEPLOYMENTS]:
            digest = sha256_file(path)
            deployment_id = f"local:{digest[:16]}"
            if self.log.get(deployment_id) is not None:
                path.unlink(missing_ok=True)
                continue
            staged = self._staged(deployment_id, ".pkg")
            os.replace(path, staged)
            try:
                manifest = read_package_manifest(staged)
                handle, version = manifest.handle, manifest.version
            except EdgekilnError as exc:
                handle, version, reason = "", 0, exc.one_line()
            else:
                reason = ""
            spec = Deployment(
                deployment_id, handle or "unknown", version or 1, digest, staged.stat().st_size,
                failure_handling=self.deploy.local_failure_handling, local=True,
            )  # fmt: skip
            self._begin(spec, "verify")
            if reason:
                self._finish(spec, "FAILED", f"package refused: {reason}")

    def process_pending(self) -> None:
        pending = [r for r in self.log.all() if r.get("status") == "DEPLOYING" and r.get("spec")]
        for record in sorted(pending, key=lambda r: r.get("received_at") or 0):
            if self._stop:
                return
            self.install(record)

    # -- the install steps -------------------------------------------------------------
    def install(self, record: dict[str, Any]) -> None:
        """Run ``record``'s deployment from the step it reached to its end (or to a
        download cut, which the next round resumes)."""
        spec = Deployment.from_dict(record["spec"])
        step = record.get("step", "download")
        try:
            while step is not None:
                self.log.update(spec.deployment_id, step=step, updated_at=self.clock())
                step = getattr(self, f"_step_{step}")(spec)
        except DownloadInterrupted as exc:
            log.info("deployment %s: %s; resumes later", spec.deployment_id, exc.message)
        except Failed as exc:
            self._fail(spec, exc.reason, step)

    def _step_download(self, spec: Deployment) -> str:
        from edgekiln.agents.deploy.download import Transfer

        transfer, stalled = Transfer(), 0
        try:
            while True:  # each cut resumes where it stopped; a source that gives nothing waits for the next round
                before = transfer.received
                try:
                    download(
                        spec.url, self._staged(spec.deployment_id, ".pkg.part"), spec.size, spec.sha256,
                        timeout=self.config.fleet.request_timeout_seconds, transfer=transfer,
                    )  # fmt: skip
                    break
                except DownloadInterrupted:
                    stalled = 0 if transfer.received > before else stalled + 1
                    if stalled >= MAX_STALLED_TRIES or self._stop:
                        raise
                    time.sleep(min(1.0, 0.05 * 2**stalled))
        except EdgekilnError as exc:
            if isinstance(exc, DownloadInterrupted):
                raise
            raise Failed(f"download refused: {exc.one_line()}") from None
        self.log.update(spec.deployment_id, bytes_received=transfer.received, requests=transfer.requests)
        return "verify"

    def _step_verify(self, spec: Deployment) -> str:
        from edgekiln.artifact.signing import extract_artifact

        if not self.deploy.trusted_keys:
            raise Failed("package refused: no trusted keys are configured (deploy.trusted_keys)")
        checkpoint("verify")
        try:
            manifest = extract_artifact(
                self._staged(spec.deployment_id, ".pkg"),
                self.deploy.trusted_keys,
                self._staged(spec.deployment_id, ".artifact.tar.gz"),
                now=self.clock(),
                health_out=self._staged(spec.deployment_id, ".health.bin"),
            )
            checkpoint("verify")
            self._check_package(spec, manifest)
        except EdgekilnError as exc:
            self._staged(spec.deployment_id, ".artifact.tar.gz").unlink(missing_ok=True)
            raise Failed(f"package refused: {exc.one_line()}") from None
        self.log.update(
            spec.deployment_id,
            package_budget_ms=manifest.latency_budget_ms,
            key_id=manifest.key_id,
            recorded_outputs=manifest.health,
        )
        checkpoint("verify")
        return "unpack"

    def _check_package(self, spec: Deployment, manifest: Any) -> None:
        """The package is the one deployed, newer than what is installed, and runs here."""
        from edgekiln.artifact.package import read_manifest
        from edgekiln.errors import CompatibilityError, IntegrityError
        from edgekiln.runtime import compat

        if not spec.local and (manifest.handle, manifest.version) != (spec.handle, spec.version):
            raise IntegrityError(
                f"it holds {manifest.handle} v{manifest.version}; the deployment is {spec.handle} v{spec.version}"
            )
        floor = self.floor.get(manifest.handle)
        if manifest.version <= floor and self.slots.pointer(manifest.handle, "committed") != manifest.version:
            raise IntegrityError(
                f"version {manifest.version} of {manifest.handle} is not above the installed {floor} (anti-rollback)"
            )
        artifact = read_manifest(self._staged(spec.deployment_id, ".artifact.tar.gz"))
        if artifact.profile != manifest.profile:
            raise IntegrityError(f"the artifact is for {artifact.profile}; the package says {manifest.profile}")
        found = compat.problems(artifact, "cuda" if artifact.runtime.cuda_arch else "cpu")
        if found:
            raise CompatibilityError(f"artifact for profile {artifact.profile} cannot run here: " + "; ".join(found))

    def _step_unpack(self, spec: Deployment) -> str | None:
        if self.slots.pointer(spec.handle, "committed") == spec.version:
            self._finish(spec, "SUCCEEDED", f"{spec.handle} v{spec.version} is installed already")
            return None
        checkpoint("unpack")
        try:
            self.slots.install(spec.handle, spec.version, self._staged(spec.deployment_id, ".artifact.tar.gz"))
        except EdgekilnError as exc:
            raise Failed(f"cannot unpack the artifact: {exc.one_line()}") from None
        checkpoint("unpack")
        return "switch"

    def _step_switch(self, spec: Deployment) -> str:
        checkpoint("switch")
        self.slots.set_pointer(spec.handle, "current", spec.version)
        checkpoint("switch")
        self.log.update(spec.deployment_id, starts=1)
        return "health"

    def _step_health(self, spec: Deployment) -> str:
        model = self._trials.pop(spec.deployment_id, None) or self._open_trial(spec)
        self._trials[spec.deployment_id] = model
        checkpoint("health")
        record = self.log.get(spec.deployment_id) or {}
        budget = spec.latency_budget_ms or record.get("package_budget_ms") or self.deploy.latency_budget_ms
        health = check_health(
            model,
            samples=self.deploy.health_samples,
            runs=self.deploy.health_runs,
            budget_ms=budget,
            reference=recorded_reference(
                record.get("recorded_outputs"), self._staged(spec.deployment_id, ".health.bin")
            ),
        )
        checkpoint("health")
        self.log.update(spec.deployment_id, health_p50_ms=health.p50_ms)
        if not health.ok:
            raise Failed(f"health check failed: {health.reason}")
        return "commit"

    def _open_trial(self, spec: Deployment) -> Any:
        try:
            return self.registry.open_model(spec.handle, self.slots.slot(spec.handle, spec.version))
        except EdgekilnError as exc:
            raise Failed(f"the new version fails to load: {exc.one_line()}") from None

    def _step_commit(self, spec: Deployment) -> None:
        model = self._trials.pop(spec.deployment_id, None)
        if model is None:  # resumed after a restart: the trial model went with the old process
            model = self._open_trial(spec)
        checkpoint("commit")
        self.floor.raise_to(spec.handle, spec.version)
        self.registry.put(spec.handle, str(self.slots.slot(spec.handle, spec.version)), model)
        checkpoint("commit")
        self.slots.set_pointer(spec.handle, "committed", spec.version)
        checkpoint("commit")
        self._finish(spec, "SUCCEEDED", f"{spec.handle} v{spec.version} passed its health check and serves")
        self.slots.clean(spec.handle, keep={spec.version})

    # -- endings ----------------------------------------------------------------------
    def _fail(self, spec: Deployment, reason: str, step: str) -> None:
        """End a deployment that failed at ``step``: undo per its failure handling."""
        _close(self._trials.pop(spec.deployment_id, None))
        if STEPS.index(step) < STEPS.index("switch"):
            self._finish(spec, "FAILED", reason)
            return
        if spec.failure_handling == "DO_NOTHING" and self._keep_anyway(spec):
            self._finish(spec, "FAILED", f"{reason}; kept v{spec.version} (failure handling DO_NOTHING)")
            return
        self._roll_back(spec, reason)

    def _keep_anyway(self, spec: Deployment) -> bool:
        try:
            model = self._open_trial(spec)
        except Failed:
            return False
        self.floor.raise_to(spec.handle, spec.version)
        self.registry.put(spec.handle, str(self.slots.slot(spec.handle, spec.version)), model)
        self.slots.set_pointer(spec.handle, "committed", spec.version)
        return True

    def _roll_back(self, spec: Deployment, reason: str) -> None:
        started = time.monotonic()
        previous = self.slots.pointer(spec.handle, "committed")
        self.slots.set_pointer(spec.handle, "current", previous)
        if previous is None:
            self.slots.remove(spec.handle, spec.version)
            self._finish(spec, "FAILED", f"{reason}; no earlier version to roll back to")
            return
        try:
            entry = self.registry.get(spec.handle)
            if entry is None or not entry.url.endswith(f"/v{previous}"):
                self._serve(spec.handle, previous)
        except EdgekilnError as exc:
            self._finish(
                spec, "FAILED_UNABLE_TO_ROLLBACK", reason,
                rollback_failure_reason=f"v{previous} does not serve again: {exc.one_line()}",
            )  # fmt: skip
            return
        if previous != spec.version:
            self.slots.remove(spec.handle, spec.version)
        seconds = round(time.monotonic() - started, 3)
        self._finish(spec, "ROLLED_BACK", f"{reason}; v{previous} serves again", rollback_seconds=seconds)

    def _finish(self, spec: Deployment, status: str, reason: str, **extra: Any) -> None:
        assert status in FINAL
        self.log.update(spec.deployment_id, status=status, reason=reason, updated_at=self.clock(), **extra)
        for suffix in (".pkg", ".pkg.part", ".artifact.tar.gz", ".artifact.tar.gz.part", ".health.bin"):
            self._staged(spec.deployment_id, suffix).unlink(missing_ok=True)
        if self.on_result is not None:
            self.on_result()
        log.info("deployment %s: %s (%s)", spec.deployment_id, status, reason)

    def _serve(self, handle: str, version: int) -> None:
        slot = self.slots.slot(handle, version)
        self.registry.put(handle, str(slot), self.registry.open_model(handle, slot))

    # -- results for the heartbeat ----------------------------------------------------
    def results(self) -> list[dict[str, Any]]:
        """The results the fleet has not acknowledged yet (local installs are not its business)."""
        return [heartbeat_result(r) for r in self.log.unreported() if not (r.get("spec") or {}).get("local")]

    def reported(self, results: list[dict[str, Any]]) -> None:
        self.log.mark_reported(results)

    def _staged(self, deployment_id: str, suffix: str) -> Path:
        return self.staging / (hashlib.sha256(deployment_id.encode()).hexdigest()[:24] + suffix)


def _close(model: Any) -> None:
    close = getattr(model, "close", None)
    if close is not None:
        try:
            close()
        except Exception:  # noqa: BLE001 - a worker that will not close is gone either way
            log.exception("closing a model worker failed")

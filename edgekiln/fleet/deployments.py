"""Deployment plans: Edge Manager's CreateEdgeDeploymentPlan, Start/StopEdgeDeploymentStage,
DescribeEdgeDeploymentPlan and ListStageDevices, and the device's GetDeployments.

A plan deploys one uploaded package (model handle + version) to one device fleet in ordered
stages.  Starting a stage picks its devices from the fleet's registered, unrevoked devices
that no earlier stage of the plan holds (PERCENTAGE of the whole fleet, SELECTION by name,
NAMECONTAINS), and a stage may start only once the stage before it has finished.  Devices
learn their deployments by polling; the first time a device is handed one is recorded, so
that stopping a stage, or a failure under ROLLBACK_ON_FAILURE (which halts the plan for
good), withholds the package from every device that has not fetched it yet.  The devices'
results arrive in their heartbeats; the latest per (device, deployment) is kept.

Statuses are derived from these rows when read (:mod:`edgekiln.fleet.deploy_status`).
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable

from edgekiln.fleet import deploy_status as ds
from edgekiln.fleet import deploy_tables as dt
from edgekiln.fleet.deploy_bodies import PlanBody
from edgekiln.fleet.packages import PackageFacts
from edgekiln.fleet.records import Device
from edgekiln.fleet.store import Conflict, FleetStore, NotFound

# At most this many failure reasons per stage in DescribeEdgeDeploymentPlan.
MAX_REASONS = 50


def deployment_id(plan: str, stage: str, handle: str, version: int) -> str:
    """The id a device sees: stable, and unique per plan, stage and package."""
    return f"{plan}:{stage}:{handle}:{version}"


class DeploymentStore:
    """The deployment rows of a :class:`FleetStore`'s database."""

    def __init__(self, store: FleetStore) -> None:
        tables = store.metadata.tables
        self.engine = store.engine
        self.devices = store.devices
        self.packages = tables[dt.PACKAGES]
        self.plans = tables[dt.PLANS]
        self.stages = tables[dt.STAGES]
        self.stage_devices = tables[dt.STAGE_DEVICES]
        self.results = tables[dt.RESULTS]

    # -- packages --------------------------------------------------------------------
    def add_package(self, facts: PackageFacts, now: float) -> tuple[dict[str, Any], bool]:
        """Record an uploaded package; (its description, True when new).  The same file again
        is no change; other bytes under a stored (handle, version) are a Conflict."""
        import sqlalchemy as sa

        with self.engine.begin() as conn:
            row = self._package_row(conn, facts.handle, facts.version)
            if row is not None:
                if row["sha256"] != facts.sha256:
                    raise Conflict(
                        f"package {facts.handle} version {facts.version} is stored already with other content",
                        hint="packages are immutable: build the new one with a higher --model-version",
                    )
                return _package(row), False
            try:
                conn.execute(
                    self.packages.insert().values(
                        handle=facts.handle,
                        version=facts.version,
                        profile=facts.profile,
                        backend=facts.backend,
                        key_id=facts.key_id,
                        expires_at=facts.expires_at,
                        sha256=facts.sha256,
                        size=facts.size,
                        object_key=facts.object_key,
                        uploaded_at=now,
                    )
                )
            except sa.exc.IntegrityError:
                raise Conflict(f"package {facts.handle} version {facts.version} was uploaded concurrently") from None
            return _package(self._package_row(conn, facts.handle, facts.version)), True

    def list_packages(self, handle: str | None = None) -> list[dict[str, Any]]:
        import sqlalchemy as sa

        query = sa.select(self.packages).order_by(self.packages.c.handle, self.packages.c.version)
        if handle:
            query = query.where(self.packages.c.handle == handle)
        with self.engine.connect() as conn:
            return [_package(r) for r in conn.execute(query).mappings()]

    def _package_row(self, conn: Any, handle: str, version: int) -> Any:
        import sqlalchemy as sa

        p = self.packages.c
        return conn.execute(sa.select(self.packages).where(p.handle == handle, p.version == version)).mappings().first()

    # -- plans -----------------------------------------------------------------------
    def create_plan(self, body: PlanBody, now: float) -> dict[str, Any]:
        """CreateEdgeDeploymentPlan: the plan and its stages, none started."""
        import sqlalchemy as sa

        with self.engine.begin() as conn:
            package = self._package_row(conn, body.model_handle, body.model_version)
            if package is None:
                raise NotFound(
                    f"no package {body.model_handle} version {body.model_version} is uploaded",
                    hint="upload it first: edgekiln fleet package upload PKG",
                )
            fleet_size = conn.execute(
                sa.select(sa.func.count())
                .select_from(self.devices)
                .where(self.devices.c.fleet == body.device_fleet_name)
            ).scalar()
            if not fleet_size:
                raise NotFound(f"no devices are registered in fleet {body.device_fleet_name}")
            try:
                plan_id = conn.execute(
                    self.plans.insert().values(
                        name=body.edge_deployment_plan_name,
                        fleet=body.device_fleet_name,
                        package_id=package["id"],
                        created_at=now,
                        last_modified_at=now,
                    )
                ).inserted_primary_key[0]
            except sa.exc.IntegrityError:
                raise Conflict(f"deployment plan {body.edge_deployment_plan_name} exists already") from None
            for position, stage in enumerate(body.stages):
                sel, cfg = stage.device_selection_config, stage.deployment_config
                conn.execute(
                    self.stages.insert().values(
                        plan_id=plan_id,
                        position=position,
                        name=stage.stage_name,
                        subset_type=sel.device_subset_type,
                        percentage=sel.percentage,
                        device_names=json.dumps(sel.device_names or []),
                        name_contains=sel.device_name_contains,
                        failure_handling=cfg.failure_handling_policy,
                        latency_budget_ms=cfg.latency_budget_ms,
                    )
                )
        return self.describe(body.edge_deployment_plan_name)

    def list_plans(self, newest: int | None = None) -> list[dict[str, Any]]:
        """Every plan described, oldest first; only the ``newest`` ones when given (a
        description reads the plan's stages and devices, so a page asks for few)."""
        import sqlalchemy as sa

        query = sa.select(self.plans.c.name).order_by(self.plans.c.id.desc())
        if newest is not None:
            query = query.limit(newest)
        with self.engine.connect() as conn:
            names = [r[0] for r in conn.execute(query)]
        return [self.describe(n) for n in reversed(names)]

    def _plan(self, conn: Any, name: str) -> tuple[Any, Any, list[Any]]:
        """The plan's row, its package's row and its stages' rows (in order)."""
        import sqlalchemy as sa

        plan = conn.execute(sa.select(self.plans).where(self.plans.c.name == name)).mappings().first()
        if plan is None:
            raise NotFound(f"no deployment plan {name}", hint="list them: edgekiln fleet deploy list")
        package = (
            conn.execute(sa.select(self.packages).where(self.packages.c.id == plan["package_id"])).mappings().one()
        )
        stages = (
            conn.execute(
                sa.select(self.stages).where(self.stages.c.plan_id == plan["id"]).order_by(self.stages.c.position)
            )
            .mappings()
            .all()
        )
        return plan, package, list(stages)

    def _stage_rows(self, conn: Any, plan: Any, package: Any, stages: list[Any]) -> dict[int, list[dict[str, Any]]]:
        """Per stage id: its devices, each with its name, delivery time and latest result."""
        import sqlalchemy as sa

        sd, d, r = self.stage_devices.c, self.devices.c, self.results.c
        rows = conn.execute(
            sa.select(sd.stage_id, sd.device_id, sd.delivered_at, d.name)
            .join_from(self.stage_devices, self.devices, sd.device_id == d.id)
            .where(sd.plan_id == plan["id"])
            .order_by(d.name)
        ).mappings()
        by_stage: dict[int, list[dict[str, Any]]] = {s["id"]: [] for s in stages}
        for row in rows:
            by_stage[row["stage_id"]].append(dict(row))
        ids = {s["id"]: deployment_id(plan["name"], s["name"], package["handle"], package["version"]) for s in stages}
        results = {}
        if ids:
            for res in conn.execute(sa.select(self.results).where(r.deployment_id.in_(list(ids.values())))).mappings():
                results[(res["device_id"], res["deployment_id"])] = dict(res)
        for stage_id, devices in by_stage.items():
            for device in devices:
                device["result"] = results.get((device["device_id"], ids[stage_id]))
        return by_stage

    # -- describe --------------------------------------------------------------------
    def describe(self, name: str) -> dict[str, Any]:
        """DescribeEdgeDeploymentPlan: the plan and, per stage, its status, device counts and
        the reasons of its failures."""
        with self.engine.connect() as conn:
            plan, package, stages = self._plan(conn, name)
            by_stage = self._stage_rows(conn, plan, package, stages)
        described = [self._describe_stage(plan, package, s, by_stage[s["id"]]) for s in stages]
        totals = {k: sum(s["device_counts"][k] for s in described) for k in ds.DEVICE_STATES}
        return {
            "edge_deployment_plan_name": plan["name"],
            "device_fleet_name": plan["fleet"],
            "model_configs": [{"model_handle": package["handle"], "model_version": package["version"]}],
            "package": _package(package),
            "creation_time": plan["created_at"],
            "last_modified_time": plan["last_modified_at"],
            "status": "HALTED" if plan["halted_at"] is not None else "ACTIVE",
            "halted_at": plan["halted_at"],
            "halted_reason": plan["halted_reason"],
            "edge_deployment_success": totals["succeeded"],
            "edge_deployment_pending": totals["pending"] + totals["in_progress"],
            "edge_deployment_failed": totals["failed"] + totals["rolled_back"],
            "device_counts": totals,
            "stages": described,
        }

    def _describe_stage(self, plan: Any, package: Any, stage: Any, devices: list[dict[str, Any]]) -> dict[str, Any]:
        view, states = self._view(plan, stage, devices)
        reasons = [
            {
                "device_name": d["name"],
                "status": d["result"]["status"],
                "reason": d["result"]["reason"],
                "rollback_failure_reason": d["result"]["rollback_failure_reason"],
                "rollback_seconds": d["result"]["rollback_seconds"],
            }
            for d, state in zip(devices, states)
            if state in ("failed", "rolled_back")
        ]
        counts = view.counts
        return {
            "stage_name": stage["name"],
            "deployment_id": deployment_id(plan["name"], stage["name"], package["handle"], package["version"]),
            "device_selection_config": _selection(stage),
            "deployment_config": {
                "failure_handling_policy": stage["failure_handling"],
                "latency_budget_ms": stage["latency_budget_ms"],
            },
            "deployment_status": {
                "stage_status": view.status,
                "edge_deployment_success_in_stage": counts["succeeded"],
                "edge_deployment_pending_in_stage": counts["pending"] + counts["in_progress"],
                "edge_deployment_failed_in_stage": counts["failed"] + counts["rolled_back"],
                "edge_deployment_status_message": view.message,
                "edge_deployment_stage_start_time": stage["started_at"],
            },
            "device_counts": counts,
            "finished": view.finished,
            "failure_reasons": reasons[:MAX_REASONS],
        }

    def _view(self, plan: Any, stage: Any, devices: list[dict[str, Any]]) -> tuple[ds.StageView, list[str]]:
        halted = plan["halted_at"] is not None
        withheld = halted or stage["stopped_at"] is not None
        states = [
            ds.device_state(d["result"]["status"] if d["result"] else None, d["delivered_at"] is not None, withheld)
            for d in devices
        ]
        view = ds.stage_view(
            started=stage["started_at"] is not None,
            stopped=stage["stopped_at"] is not None,
            policy=stage["failure_handling"],
            states=states,
            plan_halted=halted,
        )
        return view, states

    def stage_devices_of(self, name: str, stage_name: str) -> dict[str, Any]:
        """ListStageDevices: every device of a started stage, with its status and reason."""
        with self.engine.connect() as conn:
            plan, package, stages = self._plan(conn, name)
            stage = _find_stage(stages, name, stage_name)
            devices = self._stage_rows(conn, plan, package, stages)[stage["id"]]
        _, states = self._view(plan, stage, devices)
        return {
            "edge_deployment_plan_name": name,
            "stage_name": stage_name,
            "device_deployment_summaries": [
                {
                    "device_name": d["name"],
                    "device_fleet_name": plan["fleet"],
                    "stage_name": stage_name,
                    "device_deployment_status": ds.EDGE_DEVICE_STATUS[state],
                    "state": state,
                    "result_status": d["result"]["status"] if d["result"] else None,
                    "device_deployment_status_message": d["result"]["reason"] if d["result"] else "",
                    "deployment_start_time": d["delivered_at"],
                    "result_time": d["result"]["updated_at"] if d["result"] else None,
                }
                for d, state in zip(devices, states)
            ],
        }

    # -- start and stop --------------------------------------------------------------
    def start_stage(self, name: str, stage_name: str, now: float) -> dict[str, Any]:
        """StartEdgeDeploymentStage: pick the stage's devices (on its first start) and let
        them fetch the package.  Refused while the stage before has not finished, once the
        plan is halted, and for a stage that runs or has ended."""
        with self.engine.begin() as conn:
            plan, package, stages = self._plan(conn, name)
            stage = _find_stage(stages, name, stage_name)
            if plan["halted_at"] is not None:
                raise Conflict(f"deployment plan {name} is halted: {plan['halted_reason']}")
            by_stage = self._stage_rows(conn, plan, package, stages)
            for earlier in stages[: stage["position"]]:
                view, _ = self._view(plan, earlier, by_stage[earlier["id"]])
                if not view.finished:
                    raise Conflict(
                        f"stage {stage_name} of {name} cannot start before stage {earlier['name']} has finished "
                        f"(it is {view.status})"
                    )
            if stage["started_at"] is not None and stage["stopped_at"] is None:
                view, _ = self._view(plan, stage, by_stage[stage["id"]])
                raise Conflict(f"stage {stage_name} of {name} was started already (it is {view.status})")
            if stage["started_at"] is None:
                self._assign(conn, plan, stage, now)
            conn.execute(
                self.stages.update().where(self.stages.c.id == stage["id"]).values(started_at=now, stopped_at=None)
            )
            conn.execute(self.plans.update().where(self.plans.c.id == plan["id"]).values(last_modified_at=now))
        return self.describe(name)

    def _assign(self, conn: Any, plan: Any, stage: Any, now: float) -> None:
        """Pick the stage's devices among the fleet's unrevoked devices that no earlier stage
        holds, and record them."""
        import sqlalchemy as sa

        d = self.devices.c
        fleet = conn.execute(
            sa.select(d.id, d.name).where(d.fleet == plan["fleet"], d.revoked_at.is_(None)).order_by(d.name)
        ).all()
        taken = {
            r[0]
            for r in conn.execute(
                sa.select(self.stage_devices.c.device_id).where(self.stage_devices.c.plan_id == plan["id"])
            )
        }
        chosen = _select(stage, fleet, taken)
        if chosen:
            conn.execute(
                self.stage_devices.insert(),
                [{"stage_id": stage["id"], "device_id": i, "plan_id": plan["id"], "assigned_at": now} for i in chosen],
            )

    def stop_stage(self, name: str, stage_name: str, now: float) -> dict[str, Any]:
        """StopEdgeDeploymentStage: devices that have not fetched the package yet do not get
        it; those that did finish (or roll back) on their own."""
        with self.engine.begin() as conn:
            plan, package, stages = self._plan(conn, name)
            stage = _find_stage(stages, name, stage_name)
            view, _ = self._view(plan, stage, self._stage_rows(conn, plan, package, [stage])[stage["id"]])
            if view.status != "INPROGRESS":
                raise Conflict(f"stage {stage_name} of {name} is {view.status}, not in progress: nothing to stop")
            conn.execute(self.stages.update().where(self.stages.c.id == stage["id"]).values(stopped_at=now))
            conn.execute(self.plans.update().where(self.plans.c.id == plan["id"]).values(last_modified_at=now))
        return self.describe(name)

    # -- the device's side -----------------------------------------------------------
    def _assignments(self, conn: Any, device: Device) -> list[Any]:
        """The device's stages in every plan, with the plan's and the package's columns."""
        import sqlalchemy as sa

        sd, st, pl, pk = self.stage_devices.c, self.stages.c, self.plans.c, self.packages.c
        return list(
            conn.execute(
                sa.select(
                    sd.stage_id,
                    sd.delivered_at,
                    st.name.label("stage"),
                    st.started_at,
                    st.stopped_at,
                    st.failure_handling,
                    st.latency_budget_ms,
                    pl.id.label("plan_id"),
                    pl.name.label("plan"),
                    pl.halted_at,
                    pk.handle,
                    pk.version,
                    pk.sha256,
                    pk.size,
                    pk.object_key,
                )
                .join_from(self.stage_devices, self.stages, sd.stage_id == st.id)
                .join(self.plans, sd.plan_id == pl.id)
                .join(self.packages, pl.package_id == pk.id)
                .where(sd.device_id == device.id)
                .order_by(pl.id)
            ).mappings()
        )

    def deployments_for(self, device: Device, now: float) -> list[dict[str, Any]]:
        """GetDeployments: what ``device`` should have now, each with the object key of its
        package (the route turns it into a presigned URL).  A deployment is handed out while
        its stage runs and the plan is not halted, and stays listed once handed out until the
        device reports it final: the list stays as short as the device's open work."""
        import sqlalchemy as sa

        out = []
        r = self.results.c
        with self.engine.begin() as conn:
            done = {
                row[0]
                for row in conn.execute(
                    sa.select(r.deployment_id).where(r.device_id == device.id, r.status.in_(sorted(ds.FINAL)))
                )
            }
            for a in self._assignments(conn, device):
                dep_id = deployment_id(a["plan"], a["stage"], a["handle"], a["version"])
                if dep_id in done:
                    continue
                if a["delivered_at"] is None:
                    if a["started_at"] is None or a["stopped_at"] is not None or a["halted_at"] is not None:
                        continue
                    conn.execute(
                        self.stage_devices.update()
                        .where(
                            self.stage_devices.c.stage_id == a["stage_id"],
                            self.stage_devices.c.device_id == device.id,
                        )
                        .values(delivered_at=now)
                    )
                out.append(
                    {
                        "deployment_id": dep_id,
                        "plan": a["plan"],
                        "stage": a["stage"],
                        "model_handle": a["handle"],
                        "model_version": a["version"],
                        "object_key": a["object_key"],
                        "package_sha256": a["sha256"],
                        "package_size": a["size"],
                        "failure_handling": a["failure_handling"],
                        "latency_budget_ms": a["latency_budget_ms"],
                    }
                )
        return out

    def record_results(self, device: Device, results: Iterable[Any], now: float) -> int:
        """Keep the latest result per deployment of ``device`` (results for deployments it
        was never handed are ignored); a failure in a ROLLBACK_ON_FAILURE stage halts the
        plan.  Returns how many results were stored."""
        results = list(results)
        if not results:
            return 0
        stored = 0
        with self.engine.begin() as conn:
            mine = {
                deployment_id(a["plan"], a["stage"], a["handle"], a["version"]): a
                for a in self._assignments(conn, device)
            }
            for result in results:
                a = mine.get(result.deployment_id)
                if a is None:
                    continue
                stored += self._upsert_result(conn, device, result, now)
                if result.status in ds.FAILURES and a["failure_handling"] == "ROLLBACK_ON_FAILURE":
                    self._halt(conn, a["plan_id"], f"{device.name}: {result.status}: {result.reason}", now)
        return stored

    def _upsert_result(self, conn: Any, device: Device, result: Any, now: float) -> int:
        import sqlalchemy as sa

        r = self.results.c
        key = (r.device_id == device.id, r.deployment_id == result.deployment_id)
        old = conn.execute(sa.select(r.status, r.updated_at).where(*key)).first()
        values = {
            "model_handle": result.model_handle,
            "model_version": result.model_version,
            "desired_state": result.desired_state,
            "state": result.state,
            "status": result.status,
            "reason": result.reason,
            "rollback_failure_reason": result.rollback_failure_reason,
            "rollback_seconds": result.rollback_seconds,
            "updated_at": result.updated_at,
            "received_at": now,
        }
        if old is None:
            conn.execute(
                self.results.insert().values(device_id=device.id, deployment_id=result.deployment_id, **values)
            )
            return 1
        # The latest by the device's clock; a final status is never replaced by DEPLOYING
        # (a late, older heartbeat), whatever the clock says.
        if result.updated_at < old.updated_at or (old.status in ds.FINAL and result.status not in ds.FINAL):
            return 0
        conn.execute(self.results.update().where(*key).values(**values))
        return 1

    def _halt(self, conn: Any, plan_id: int, reason: str, now: float) -> None:
        p = self.plans.c
        conn.execute(
            self.plans.update()
            .where(p.id == plan_id, p.halted_at.is_(None))
            .values(halted_at=now, halted_reason=reason[:512], last_modified_at=now)
        )


def _find_stage(stages: list[Any], plan: str, name: str) -> Any:
    for stage in stages:
        if stage["name"] == name:
            return stage
    raise NotFound(
        f"deployment plan {plan} has no stage {name}", hint=f"its stages: {', '.join(s['name'] for s in stages)}"
    )


def _select(stage: Any, fleet: list[Any], taken: set[int]) -> list[int]:
    """The device ids a stage picks: PERCENTAGE of the whole fleet (rounded up), the named
    devices, or those whose name contains a string — among devices no earlier stage holds."""
    free = [(i, n) for i, n in fleet if i not in taken]
    kind = stage["subset_type"]
    if kind == "PERCENTAGE":
        return [i for i, _ in free[: math.ceil(stage["percentage"] * len(fleet) / 100)]]
    if kind == "SELECTION":
        names = set(json.loads(stage["device_names"]))
        missing = names - {n for _, n in fleet}
        if missing:
            raise NotFound(
                f"stage {stage['name']} names devices that are not registered (or are revoked) in the fleet: "
                f"{', '.join(sorted(missing)[:10])}"
            )
        return [i for i, n in free if n in names]
    return [i for i, n in free if stage["name_contains"] in n]


def _selection(stage: Any) -> dict[str, Any]:
    kind = stage["subset_type"]
    out: dict[str, Any] = {"device_subset_type": kind}
    if kind == "PERCENTAGE":
        out["percentage"] = stage["percentage"]
    elif kind == "SELECTION":
        out["device_names"] = json.loads(stage["device_names"])
    else:
        out["device_name_contains"] = stage["name_contains"]
    return out


def _package(row: Any) -> dict[str, Any]:
    return {
        "model_handle": row["handle"],
        "model_version": row["version"],
        "profile": row["profile"],
        "backend": row["backend"],
        "key_id": row["key_id"],
        "expires_at": row["expires_at"],
        "sha256": row["sha256"],
        "size": row["size"],
        "uploaded_at": row["uploaded_at"],
    }

"""The deployment API's routes: packages and plans for operators (the admin token), the
device's GetDeployments, and the local object store's presigned package downloads.

    PUT  /v1/packages                                         upload a signed package (raw body)
    GET  /v1/packages[?handle=]                               uploaded packages
    POST /v1/deployment-plans                                 CreateEdgeDeploymentPlan
    GET  /v1/deployment-plans                                 every plan, described
    GET  /v1/deployment-plans/{plan}                          DescribeEdgeDeploymentPlan
    POST /v1/deployment-plans/{plan}/stages/{stage}/start     StartEdgeDeploymentStage
    POST /v1/deployment-plans/{plan}/stages/{stage}/stop      StopEdgeDeploymentStage
    GET  /v1/deployment-plans/{plan}/stages/{stage}/devices   ListStageDevices
    GET  /v1/agent/deployments                                GetDeployments (device token)
    GET  /v1/package-files/{key}?expires=&signature=          local store only: the package, with Range
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from edgekiln.errors import EdgekilnError, UserError
from edgekiln.fleet import packages as pkgs
from edgekiln.fleet.deploy_bodies import PlanBody
from edgekiln.fleet.deployments import DeploymentStore
from edgekiln.fleet.records import Device
from edgekiln.fleet.routes import Service
from edgekiln.fleet.store import Conflict, NotFound

PLAN = PathParam(max_length=63)
STAGE = PathParam(max_length=63)


def _http(exc: EdgekilnError) -> HTTPException:
    status = 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else 400
    return HTTPException(status, exc.one_line())


def operator_routes(service: Service) -> APIRouter:
    deployments = DeploymentStore(service.store)
    router = APIRouter(dependencies=[Depends(service.auth.admin)])

    @router.put(pkgs.UPLOAD_PATH)
    async def upload_package(request: Request, response: Response) -> dict[str, Any]:
        fd, name = tempfile.mkstemp(prefix="edgekiln-package-", suffix=".pkg")
        path = Path(name)
        try:
            size = 0
            with os.fdopen(fd, "wb") as fh:
                async for chunk in request.stream():  # BodyLimit caps the total
                    size += len(chunk)
                    fh.write(chunk)
            if not size:
                raise HTTPException(400, "empty body: send the package file as the request body")
            described, new = await run_in_threadpool(_store_package, service, deployments, path)
        finally:
            path.unlink(missing_ok=True)
        response.status_code = 201 if new else 200
        return described

    @router.get(pkgs.UPLOAD_PATH)
    def list_packages(handle: str | None = Query(default=None, max_length=63)) -> dict[str, Any]:
        return {"packages": deployments.list_packages(handle)}

    @router.post("/v1/deployment-plans", status_code=201)
    def create_plan(body: PlanBody) -> dict[str, Any]:
        try:
            return deployments.create_plan(body, service.clock())
        except UserError as exc:
            raise _http(exc) from None

    @router.get("/v1/deployment-plans")
    def list_plans() -> dict[str, Any]:
        return {"plans": deployments.list_plans()}

    @router.get("/v1/deployment-plans/{plan}")
    def describe_plan(plan: str = PLAN) -> dict[str, Any]:
        try:
            return deployments.describe(plan)
        except UserError as exc:
            raise _http(exc) from None

    @router.post("/v1/deployment-plans/{plan}/stages/{stage}/{action}")
    def start_or_stop(plan: str = PLAN, stage: str = STAGE, action: str = PathParam(pattern="^(start|stop)$")) -> Any:
        act = deployments.start_stage if action == "start" else deployments.stop_stage
        try:
            return act(plan, stage, service.clock())
        except UserError as exc:
            raise _http(exc) from None

    @router.get("/v1/deployment-plans/{plan}/stages/{stage}/devices")
    def stage_devices(plan: str = PLAN, stage: str = STAGE) -> dict[str, Any]:
        try:
            return deployments.stage_devices_of(plan, stage)
        except UserError as exc:
            raise _http(exc) from None

    return router


def _store_package(service: Service, deployments: DeploymentStore, path: Path) -> tuple[dict[str, Any], bool]:
    """Read the package's facts, put it in the object store, record it."""
    try:
        facts = pkgs.read_facts(path)
    except EdgekilnError as exc:  # malformed, oversized, or not a package at all
        raise HTTPException(400, f"not a valid package: {exc.one_line()}") from None
    try:
        # Stored first, recorded second: a recorded package is always in the store.  Other
        # bytes under a recorded version are refused by add_package (the key holds the
        # sha256, so nothing recorded is overwritten).
        if not any(p["model_version"] == facts.version for p in deployments.list_packages(facts.handle)):
            service.objects.put_file(facts.object_key, path)
        return deployments.add_package(facts, service.clock())
    except UserError as exc:
        raise _http(exc) from None


def device_routes(service: Service) -> APIRouter:
    deployments = DeploymentStore(service.store)
    router = APIRouter()

    @router.get("/v1/agent/deployments")
    def get_deployments(request: Request, device: Device = Depends(service.auth.device)) -> dict[str, Any]:
        base = str(request.base_url)
        out = []
        for d in deployments.deployments_for(device, service.clock()):
            key = d.pop("object_key")
            d["package_url"] = service.objects.presign_get(key, service.options.presign_seconds, base)
            out.append(d)
        return {"deployments": out}

    return router


def package_file_routes(service: Service) -> APIRouter:
    """The local store's presigned GETs of packages; Range requests get 206."""
    router = APIRouter()

    @router.get(pkgs.FILES_PATH + "{key:path}")
    def package_file(key: str, expires: int = Query(...), signature: str = Query(..., max_length=128)) -> Any:
        path = pkgs.local_file(service.objects, key, expires, signature, service.clock())
        if path is None:
            raise HTTPException(403, "signature does not match, the URL has expired, or the object is gone")
        return FileResponse(path, media_type="application/x-tar")

    return router

"""The fleet service's routes, one router per concern (see ``edgekiln.fleet.app``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response

from edgekiln import __version__
from edgekiln.errors import UserError
from edgekiln.fleet import objects as objs
from edgekiln.fleet.auth import Auth
from edgekiln.fleet.bodies import CapturesBody, HeartbeatsBody, RegisterBody, RotateBody, UploadsBody, count_problem
from edgekiln.fleet.deployments import DeploymentStore
from edgekiln.fleet.options import FleetOptions
from edgekiln.fleet.records import Device
from edgekiln.fleet.store import Conflict, FleetStore, NotFound


@dataclass(frozen=True)
class Service:
    """What every route needs."""

    options: FleetOptions
    store: FleetStore
    objects: Any
    clock: Callable[[], float]
    auth: Auth

    def window(self) -> dict[str, float]:
        return {"now": self.clock(), "connected_seconds": self.options.connected_seconds}


def _user_error(exc: UserError) -> HTTPException:
    status = 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else 400
    return HTTPException(status, exc.one_line())


def _prefix(device: Device) -> str:
    return f"{device.fleet}/{device.name}/"


def _actor(request: Request) -> str:
    """Who, for the audit trail: the admin token's holder, and from where."""
    return f"admin from {request.client.host}" if request.client else "admin"


def _expiry(service: Service, seconds: int | None) -> float | None:
    return None if seconds is None else service.clock() + seconds


def public_routes() -> APIRouter:
    router = APIRouter()

    @router.get("/v1/health")
    def health() -> dict[str, Any]:
        # Only liveness: where the data lives is for operators (/v1/status).
        return {"status": "ok", "version": __version__}

    return router


def operator_routes(service: Service) -> APIRouter:
    store = service.store
    router = APIRouter(dependencies=[Depends(service.auth.admin)])

    @router.get("/v1/status")
    def status() -> dict[str, Any]:
        return {
            "status": "ok",
            "version": __version__,
            "objects": objs.describe(service.objects),
            "database": store.engine.url.render_as_string(hide_password=True),
        }

    @router.post("/v1/devices", status_code=201)
    def register(body: RegisterBody, request: Request) -> dict[str, Any]:
        expires_at = _expiry(service, body.expires_in_seconds)
        try:
            token = store.register_device(
                body.fleet, body.device, body.description, service.clock(), expires_at=expires_at, actor=_actor(request)
            )
        except Conflict as exc:
            raise _user_error(exc) from None
        return {
            "fleet": body.fleet,
            "device": body.device,
            "token": token,
            "expires_at": expires_at,
            "prefix": f"{body.fleet}/{body.device}/",
        }

    @router.get("/v1/devices")
    def list_devices(fleet: str | None = Query(default=None, max_length=63)) -> dict[str, Any]:
        return {"devices": store.list_devices(fleet, **service.window())}

    @router.get("/v1/devices/{fleet}/{device}")
    def describe_device(fleet: str, device: str) -> dict[str, Any]:
        try:
            return store.describe_device(fleet, device, **service.window())
        except NotFound as exc:
            raise _user_error(exc) from None

    @router.get("/v1/devices/{fleet}/{device}/heartbeats")
    def device_heartbeats(fleet: str, device: str) -> dict[str, Any]:
        try:
            return store.heartbeat_history(fleet, device)
        except NotFound as exc:
            raise _user_error(exc) from None

    @router.get("/v1/devices/{fleet}/{device}/captures")
    def device_captures(fleet: str, device: str) -> dict[str, Any]:
        try:
            listing = store.list_captures(fleet, device)
        except NotFound as exc:
            raise _user_error(exc) from None
        listing["objects"] = [{"key": k, "size": s} for k, s in service.objects.list(f"{fleet}/{device}/")]
        listing["store"] = objs.describe(service.objects)
        return listing

    @router.get("/v1/fleets/{fleet}/report")
    def fleet_report(fleet: str) -> dict[str, Any]:
        try:
            return store.fleet_report(fleet, **service.window())
        except NotFound as exc:
            raise _user_error(exc) from None

    return router


def credential_routes(service: Service) -> APIRouter:
    store = service.store
    router = APIRouter(dependencies=[Depends(service.auth.admin)])

    @router.post("/v1/devices/{fleet}/{device}/rotate")
    def rotate(fleet: str, device: str, request: Request, body: RotateBody | None = None) -> dict[str, Any]:
        expires_at = _expiry(service, body.expires_in_seconds if body else None)
        try:
            token = store.rotate_token(fleet, device, service.clock(), expires_at=expires_at, actor=_actor(request))
        except NotFound as exc:
            raise _user_error(exc) from None
        return {"fleet": fleet, "device": device, "token": token, "expires_at": expires_at}

    @router.post("/v1/devices/{fleet}/{device}/revoke")
    def revoke(fleet: str, device: str, request: Request) -> dict[str, Any]:
        try:
            store.revoke_token(fleet, device, service.clock(), actor=_actor(request))
        except NotFound as exc:
            raise _user_error(exc) from None
        return {"fleet": fleet, "device": device, "revoked": True}

    @router.get("/v1/audit")
    def audit(
        fleet: str | None = Query(default=None, max_length=63),
        device: str | None = Query(default=None, max_length=63),
        limit: int = Query(default=1000, ge=1, le=10000),
    ) -> dict[str, Any]:
        return {"entries": [asdict(e) for e in store.audit_entries(fleet, device, limit)]}

    return router


def device_routes(service: Service) -> APIRouter:
    store, objects, options = service.store, service.objects, service.options
    router = APIRouter()

    @router.post("/v1/agent/heartbeats")
    def heartbeats(body: HeartbeatsBody, device: Device = Depends(service.auth.device)) -> dict[str, Any]:
        problem = count_problem(body, options)
        if problem:
            raise HTTPException(413, problem)
        for hb in body.heartbeats:
            named = (hb.device_fleet_name or device.fleet, hb.device_name or device.name)
            if named != (device.fleet, device.name):
                raise HTTPException(
                    403, f"this token belongs to {device.fleet}/{device.name}, not {named[0][:63]}/{named[1][:63]}"
                )
        new, dup = store.add_heartbeats(device, [hb.record() for hb in body.heartbeats], service.clock())
        results = [r for hb in body.heartbeats for r in hb.deployment_results]
        DeploymentStore(store).record_results(device, results, service.clock())
        return {"accepted": new, "duplicates": dup}

    @router.post("/v1/agent/uploads")
    def uploads(body: UploadsBody, request: Request, device: Device = Depends(service.auth.device)) -> dict[str, Any]:
        try:
            keys = [objs.check_relative_key(k) for k in body.keys]
        except UserError as exc:
            raise HTTPException(400, exc.one_line()) from None
        base = str(request.base_url)
        urls = {k: objects.presign_put(_prefix(device) + k, options.presign_seconds, base) for k in keys}
        return {"prefix": _prefix(device), "expires_in": options.presign_seconds, "urls": urls}

    @router.post("/v1/agent/captures")
    def captures(body: CapturesBody, device: Device = Depends(service.auth.device)) -> dict[str, Any]:
        try:
            keys = [objs.check_relative_key(k) for k in [body.key, *body.objects]]
        except UserError as exc:
            raise HTTPException(400, exc.one_line()) from None
        missing = [k for k in keys if objects.head(_prefix(device) + k) is None]
        if missing:
            raise HTTPException(409, f"not in the object store: {', '.join(missing[:5])}")
        new, dup = store.record_batch(
            device,
            _prefix(device) + body.key,
            [_prefix(device) + k for k in body.objects],
            [r.record() for r in body.records],
            body.bytes,
            service.clock(),
        )
        return {"new": new, "duplicates": dup}

    return router


def object_routes(service: Service) -> APIRouter:
    """The local object store's presigned PUTs, streamed to disk up to ``max_object_bytes``."""
    objects = service.objects
    router = APIRouter()

    @router.put("/v1/objects/{key:path}")
    async def put_object(
        key: str, request: Request, expires: int = Query(...), signature: str = Query(..., max_length=128)
    ) -> Response:
        if not objects.verify(key, expires, signature, service.clock()):
            raise HTTPException(403, "signature does not match or the URL has expired")
        try:
            await objects.put_stream(key, request.stream(), service.options.max_object_bytes)
        except objs.TooLarge as exc:
            raise HTTPException(413, exc.one_line()) from None
        except UserError as exc:
            raise HTTPException(400, exc.one_line()) from None
        return Response(status_code=200)

    return router

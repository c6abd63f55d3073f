"""The fleet service: an HTTP/JSON API (FastAPI) over the fleet database and object store.

Two kinds of callers, told apart by their bearer token:

* operators (the admin token): register devices, list and describe them, read a fleet's
  report and a device's captured objects;
* devices (a per-device token issued at registration, stored only as a hash): send
  heartbeats, ask for presigned upload URLs for keys under their own prefix, and note
  delivered capture batches.  A device token opens nothing but the ``/v1/agent`` routes,
  and every key it names is put under ``<its fleet>/<its name>/``, so a device can neither
  read nor write another device's data.

Importing this module imports FastAPI; ``edgekiln.fleet`` itself stays light.
"""

import hmac
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field

from edgekiln import __version__
from edgekiln.errors import UserError
from edgekiln.fleet import objects as objs
from edgekiln.fleet.store import Conflict, Device, FleetStore, NotFound

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9](-*[A-Za-z0-9])*$")


@dataclass(frozen=True)
class FleetOptions:
    """How the service runs; validated on construction."""

    database_url: str
    admin_token: str
    object_store: str = "s3"  # "s3" or "local"
    objects_dir: Optional[Path] = None
    s3_endpoint: Optional[str] = None
    s3_bucket: str = "edgekiln-captures"
    s3_region: str = "us-east-1"
    presign_seconds: int = 300
    connected_seconds: float = 120.0
    local_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    def __post_init__(self) -> None:
        if not self.database_url:
            raise UserError("fleet: the database URL is empty (give --db sqlite:///fleet.db or postgresql://…)")
        if len(self.admin_token) < 16:
            raise UserError("fleet: the admin token must be at least 16 characters")
        if self.object_store not in ("s3", "local"):
            raise UserError(f"fleet: object store must be s3 or local, not {self.object_store!r}")
        if self.object_store == "local" and self.objects_dir is None:
            raise UserError("fleet: --objects-dir is required with the local object store")
        if self.object_store == "s3" and not re.match(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", self.s3_bucket):
            raise UserError(f"fleet: {self.s3_bucket!r} is not a valid S3 bucket name")
        if not 1 <= self.presign_seconds <= 7 * 24 * 3600:
            raise UserError("fleet: presigned URL lifetime must be between 1 s and 7 days")
        if self.connected_seconds <= 0:
            raise UserError("fleet: the connected window must be positive")


def build_object_store(options: FleetOptions) -> Any:
    if options.object_store == "local":
        return objs.LocalObjects(options.objects_dir, options.local_secret)
    return objs.S3Objects(options.s3_bucket, endpoint_url=options.s3_endpoint, region=options.s3_region)


# -- request bodies ------------------------------------------------------------------
class RegisterBody(BaseModel):
    fleet: str = Field(min_length=1, max_length=63)
    device: str = Field(min_length=1, max_length=63)
    description: str = Field(default="", max_length=1024)


class HeartbeatsBody(BaseModel):
    heartbeats: list[dict[str, Any]] = Field(max_length=1000)


class UploadsBody(BaseModel):
    keys: list[str] = Field(min_length=1, max_length=1000)


class RecordRef(BaseModel):
    record_id: str = Field(min_length=1, max_length=128)
    model_name: str = Field(default="", max_length=128)


class CapturesBody(BaseModel):
    key: str
    objects: list[str] = Field(default_factory=list, max_length=10000)
    bytes: int = Field(default=0, ge=0)
    records: list[RecordRef] = Field(max_length=100000)


def create_app(options: FleetOptions, *, store: Optional[FleetStore] = None, objects: Any = None,
               clock: Callable[[], float] = time.time) -> FastAPI:
    """The FastAPI application; ``store`` and ``objects`` default to those the options name."""
    store = store or FleetStore(options.database_url)
    store.create_schema()
    objects = objects if objects is not None else build_object_store(options)
    objects.ensure_ready()

    app = FastAPI(title="edgekiln fleet service", version=__version__)
    app.state.store = store
    app.state.objects = objects
    app.state.options = options

    def bearer(authorization: str) -> str:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        return token.strip()

    def require_admin(authorization: str = Header(default="")) -> None:
        token = bearer(authorization)
        if hmac.compare_digest(token.encode(), options.admin_token.encode()):
            return
        if store.authenticate(token) is not None:
            raise HTTPException(403, "a device token cannot use operator routes")
        raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": "Bearer"})

    def require_device(authorization: str = Header(default="")) -> Device:
        device = store.authenticate(bearer(authorization))
        if device is None:
            raise HTTPException(401, "unknown device token", headers={"WWW-Authenticate": "Bearer"})
        return device

    def prefix(device: Device) -> str:
        return f"{device.fleet}/{device.name}/"

    def user_error(exc: UserError) -> HTTPException:
        status = 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else 400
        return HTTPException(status, exc.one_line())

    @app.get("/v1/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "objects": objs.describe(objects)}

    # -- operators -------------------------------------------------------------------
    @app.post("/v1/devices", status_code=201, dependencies=[Depends(require_admin)])
    def register(body: RegisterBody) -> dict[str, Any]:
        for what, value in (("fleet", body.fleet), ("device", body.device)):
            if not NAME_RE.match(value):
                raise HTTPException(422, f"{what} name {value!r} must be letters, digits and inner dashes")
        try:
            token = store.register_device(body.fleet, body.device, body.description, clock())
        except Conflict as exc:
            raise user_error(exc) from None
        return {"fleet": body.fleet, "device": body.device, "token": token, "prefix": f"{body.fleet}/{body.device}/"}

    @app.get("/v1/devices", dependencies=[Depends(require_admin)])
    def list_devices(fleet: Optional[str] = Query(default=None)) -> dict[str, Any]:
        return {"devices": store.list_devices(fleet, now=clock(), connected_seconds=options.connected_seconds)}

    @app.get("/v1/devices/{fleet}/{device}", dependencies=[Depends(require_admin)])
    def describe_device(fleet: str, device: str) -> dict[str, Any]:
        try:
            return store.describe_device(fleet, device, now=clock(), connected_seconds=options.connected_seconds)
        except NotFound as exc:
            raise user_error(exc) from None

    @app.get("/v1/devices/{fleet}/{device}/heartbeats", dependencies=[Depends(require_admin)])
    def device_heartbeats(fleet: str, device: str) -> dict[str, Any]:
        try:
            return {"heartbeat_ids": store.heartbeat_ids(fleet, device)}
        except NotFound as exc:
            raise user_error(exc) from None

    @app.get("/v1/devices/{fleet}/{device}/captures", dependencies=[Depends(require_admin)])
    def device_captures(fleet: str, device: str) -> dict[str, Any]:
        try:
            listing = store.list_captures(fleet, device)
        except NotFound as exc:
            raise user_error(exc) from None
        listing["objects"] = [{"key": k, "size": s} for k, s in objects.list(f"{fleet}/{device}/")]
        listing["store"] = objs.describe(objects)
        return listing

    @app.get("/v1/fleets/{fleet}/report", dependencies=[Depends(require_admin)])
    def fleet_report(fleet: str) -> dict[str, Any]:
        try:
            return store.fleet_report(fleet, now=clock(), connected_seconds=options.connected_seconds)
        except NotFound as exc:
            raise user_error(exc) from None

    # -- devices ---------------------------------------------------------------------
    @app.post("/v1/agent/heartbeats")
    def heartbeats(body: HeartbeatsBody, device: Device = Depends(require_device)) -> dict[str, Any]:
        for hb in body.heartbeats:
            if not isinstance(hb.get("heartbeat_id"), str) or not hb["heartbeat_id"]:
                raise HTTPException(422, "every heartbeat needs a heartbeat_id")
            if not isinstance(hb.get("timestamp"), (int, float)):
                raise HTTPException(422, "every heartbeat needs a numeric timestamp")
            named = (hb.get("device_fleet_name", device.fleet), hb.get("device_name", device.name))
            if named != (device.fleet, device.name):
                raise HTTPException(403, f"this token belongs to {device.fleet}/{device.name}, "
                                         f"not {named[0]}/{named[1]}")
        new, dup = store.add_heartbeats(device, body.heartbeats, clock())
        return {"accepted": new, "duplicates": dup}

    @app.post("/v1/agent/uploads")
    def uploads(body: UploadsBody, request: Request, device: Device = Depends(require_device)) -> dict[str, Any]:
        try:
            keys = [objs.check_relative_key(k) for k in body.keys]
        except UserError as exc:
            raise HTTPException(400, exc.one_line()) from None
        base = str(request.base_url)
        urls = {k: objects.presign_put(prefix(device) + k, options.presign_seconds, base) for k in keys}
        return {"prefix": prefix(device), "expires_in": options.presign_seconds, "urls": urls}

    @app.post("/v1/agent/captures")
    def captures(body: CapturesBody, device: Device = Depends(require_device)) -> dict[str, Any]:
        try:
            keys = [objs.check_relative_key(k) for k in [body.key, *body.objects]]
        except UserError as exc:
            raise HTTPException(400, exc.one_line()) from None
        missing = [k for k in keys if objects.head(prefix(device) + k) is None]
        if missing:
            raise HTTPException(409, f"not in the object store: {', '.join(missing[:5])}")
        new, dup = store.record_batch(device, prefix(device) + body.key, [prefix(device) + k for k in body.objects],
                                      [r.model_dump() for r in body.records], body.bytes, clock())
        return {"new": new, "duplicates": dup}

    # -- the local object store's presigned PUTs ---------------------------------------
    if isinstance(objects, objs.LocalObjects):
        @app.put("/v1/objects/{key:path}")
        async def put_object(key: str, request: Request, expires: int = Query(...),
                             signature: str = Query(...)) -> Response:
            if not objects.verify(key, expires, signature, clock()):
                raise HTTPException(403, "signature does not match or the URL has expired")
            objects.put(key, await request.body())
            return Response(status_code=200)

    return app

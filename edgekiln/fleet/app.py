"""The fleet service: an HTTP/JSON API (FastAPI) over the fleet database and object store.

Two kinds of callers, told apart by their bearer token:

* operators (the admin token): register devices, rotate and revoke their tokens, read the
  audit trail, list and describe devices, read a fleet's report and a device's captured
  objects;
* devices (a per-device token issued at registration or rotation, stored only as a hash,
  refused once revoked or past its optional expiry): send heartbeats, ask for presigned
  upload URLs for keys under their own prefix, and note delivered capture batches.  A
  device token opens nothing but the ``/v1/agent`` routes, and every key it names is put
  under ``<its fleet>/<its name>/``, so a device can neither read nor write another
  device's data.

Every request body is bounded before it is parsed (:class:`BodyLimit`).  The routes live
in ``edgekiln.fleet.routes`` (deployments: ``edgekiln.fleet.deploy_routes``), the token
checks in ``edgekiln.fleet.auth``.  Importing this module imports FastAPI;
``edgekiln.fleet`` itself stays light.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any, AsyncIterator, Awaitable, Callable

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from edgekiln import __version__
from edgekiln.fleet import objects as objs
from edgekiln.fleet import packages as pkgs
from edgekiln.fleet.auth import Auth
from edgekiln.fleet.options import FleetOptions
from edgekiln.fleet.store import FleetStore

__all__ = ["FleetOptions", "create_app", "build_object_store", "BodyLimit"]


def build_object_store(options: FleetOptions) -> Any:
    if options.object_store == "local":
        return objs.LocalObjects(options.objects_dir, options.local_secret)
    return objs.S3Objects(options.s3_bucket, endpoint_url=options.s3_endpoint, region=options.s3_region)


class BodyLimit:
    """ASGI middleware: a request body over its cap gets 413 before anything parses it.

    A declared Content-Length over the cap is refused without reading a byte; a body that
    arrives in chunks is counted as it is read, and the read that crosses the cap fails
    with 413, so nothing holds more than the cap.  PUTs to the local object store have a
    cap of their own (the route streams them to disk)."""

    def __init__(self, app: Any, *, json_limit: int, object_limit: int) -> None:
        self.app = app
        self.json_limit = json_limit
        self.object_limit = object_limit

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Object PUTs and package uploads are capped like objects, not like JSON.
        large = scope["path"].startswith(objs.PUT_PATH) or scope["path"] == pkgs.UPLOAD_PATH
        limit = self.object_limit if large else self.json_limit
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _reply(send, 400, "Content-Length is not a number")
                return
            if int(declared) > limit:
                await _reply(send, 413, f"request body of {int(declared)} bytes is over the {limit}-byte limit")
                return
        seen = 0

        async def limited() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, f"request body is over the {limit}-byte limit")
            return message

        await self.app(scope, limited, send)


async def _reply(send: Callable[[dict[str, Any]], Awaitable[None]], status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _invalid_body(request: Request, exc: Exception) -> JSONResponse:
    """422 naming where and what, without echoing the input: FastAPI's default answer
    repeats it, which fails to encode for NaN (a 500) and sends a large body back."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [
        {
            "loc": [str(p)[:64] for p in e.get("loc", ())][:12],
            "msg": str(e.get("msg", ""))[:200],
            "type": str(e.get("type", "")),
        }
        for e in errors[:20]
    ]
    return JSONResponse({"detail": detail}, status_code=422)


def _lifespan(options: FleetOptions, store: FleetStore, clock: Callable[[], float]) -> Any:
    """While the app serves: the heartbeat roll-up every ``rollup_interval_seconds``."""
    from edgekiln.fleet import rollup

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        loop = None
        if options.rollup_interval_seconds > 0:
            loop = rollup.RollupLoop(
                store,
                options.rollup_interval_seconds,
                lambda s, now, stop: rollup.roll_up(
                    s,
                    now,
                    raw_retention_seconds=options.raw_retention_seconds,
                    aggregate_retention_seconds=options.aggregate_retention_seconds,
                    stop=stop,
                ),
                clock,
            )
            loop.start()
        try:
            yield
        finally:
            if loop is not None:
                loop.stop()

    return lifespan


def create_app(
    options: FleetOptions,
    *,
    store: FleetStore | None = None,
    objects: Any = None,
    clock: Callable[[], float] = time.time,
    prepare: bool = True,
) -> FastAPI:
    """The FastAPI application; ``store`` and ``objects`` default to those the options name.

    ``prepare`` creates the schema and the bucket; the workers of ``fleet serve --workers``
    leave that to the parent, which does it once before they start."""
    from edgekiln.fleet import deploy_routes, routes

    store = store or FleetStore(options.database_url)
    objects = objects if objects is not None else build_object_store(options)
    if prepare:
        store.create_schema()
        objects.ensure_ready()

    docs = options.api_docs
    app = FastAPI(
        title="edgekiln fleet service",
        version=__version__,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
        lifespan=_lifespan(options, store, clock),
    )
    app.add_middleware(BodyLimit, json_limit=options.max_body_bytes, object_limit=options.max_object_bytes)
    app.add_exception_handler(RequestValidationError, _invalid_body)
    app.state.store = store
    app.state.objects = objects
    app.state.options = options

    service = routes.Service(options, store, objects, clock, Auth(options, store, clock))
    app.include_router(routes.public_routes())
    app.include_router(routes.operator_routes(service))
    app.include_router(routes.credential_routes(service))
    app.include_router(routes.device_routes(service))
    app.include_router(deploy_routes.operator_routes(service))
    app.include_router(deploy_routes.device_routes(service))
    if isinstance(objects, objs.LocalObjects):
        app.include_router(routes.object_routes(service))
        app.include_router(deploy_routes.package_file_routes(service))
    from edgekiln.fleet.dashboard import pages as dashboard

    dashboard.register(app, service)
    return app

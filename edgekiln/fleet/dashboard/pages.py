"""The dashboard's routes: pages under ``/dashboard`` and the benchmark upload.

Pages need a signed-in admin session (``access``); the refresh script asks for the same
URL with ``X-Dashboard-Fragment: 1`` and gets the page's main section only.  Every answer
carries a Content-Security-Policy that allows this origin alone, so a page cannot load
anything from elsewhere even by mistake.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from edgekiln.errors import UserError
from edgekiln.fleet.dashboard import benchmarks, thumbs, views
from edgekiln.fleet.dashboard.access import Access, SignInRequired, check_csrf, check_same_origin, read_form
from edgekiln.fleet.dashboard.tables import DashboardTables, Session
from edgekiln.fleet.store import NotFound

REFRESH_MS = 2000
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
STATIC = {
    "dashboard.css": "text/css; charset=utf-8",
    "refresh.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


def _templates() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resources.files("edgekiln.fleet.dashboard") / "templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["when"] = lambda ts: "never" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))
    env.filters["url"] = lambda s: quote(str(s), safe="")
    env.filters["size"] = _size
    env.filters["num"] = lambda v: "–" if v is None else (f"{v:.0f}" if float(v).is_integer() else f"{v:.2f}")
    return env


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def register(app: FastAPI, service: Any) -> None:
    """Add the dashboard to the fleet service's app (its tables too)."""
    tables = DashboardTables(service.store.engine)
    tables.create()
    access = Access(
        admin_token=service.options.admin_token,
        tables=tables,
        authenticate_device=service.store.authenticate,
        clock=service.clock,
        secure_cookie=getattr(service.options, "dashboard_secure_cookie", False),
    )

    async def sign_in_required(request: Request, exc: Exception) -> Response:
        if request.headers.get("x-dashboard-fragment"):
            return Response(status_code=401, headers=SECURITY_HEADERS)
        return RedirectResponse("/dashboard/signin", status_code=303, headers=SECURITY_HEADERS)

    app.add_exception_handler(SignInRequired, sign_in_required)
    render = Renderer(_templates())
    app.include_router(access_routes(access, render))
    app.include_router(page_routes(service, access, tables, render))
    app.include_router(benchmark_routes(service, tables))


@dataclass(frozen=True)
class Renderer:
    """A page, or only its main section when the refresh script asks."""

    env: Any

    def __call__(self, request: Request, template: str, session: Session | None, **context: Any) -> HTMLResponse:
        fragment = bool(request.headers.get("x-dashboard-fragment"))
        html = self.env.get_template(template).render(
            fragment=fragment, csrf=session.csrf if session else "", refresh_ms=REFRESH_MS, **context
        )
        return HTMLResponse(html, headers=SECURITY_HEADERS)


def access_routes(access: Access, render: Renderer) -> APIRouter:
    """Static files, sign-in and sign-out."""
    router = APIRouter(prefix="/dashboard", include_in_schema=False)

    @router.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC:
            raise HTTPException(404, "no such file")
        body = (resources.files("edgekiln.fleet.dashboard") / "static" / name).read_bytes()
        return Response(body, media_type=STATIC[name], headers={"Cache-Control": "max-age=300"})

    @router.get("/signin")
    def sign_in_page(request: Request) -> HTMLResponse:
        return render(request, "signin.html", None, error="")

    @router.post("/signin")
    async def sign_in(request: Request) -> Response:
        check_same_origin(request)
        form = await read_form(request)
        response = RedirectResponse("/dashboard", status_code=303, headers=SECURITY_HEADERS)
        try:
            access.sign_in(form.get("credential", "").strip(), response)
        except HTTPException as exc:
            page = render(request, "signin.html", None, error=exc.detail)
            page.status_code = exc.status_code
            return page
        return response

    @router.post("/signout")
    async def sign_out(request: Request, session: Session = Depends(access.session)) -> Response:
        check_same_origin(request)
        check_csrf(session, await read_form(request))
        response = RedirectResponse("/dashboard/signin", status_code=303, headers=SECURITY_HEADERS)
        access.sign_out(session, response)
        return response

    return router


def page_routes(service: Any, access: Access, tables: DashboardTables, render: Renderer) -> APIRouter:
    """The pages, each for a signed-in admin."""
    store, options = service.store, service.options
    router = APIRouter(prefix="/dashboard", include_in_schema=False)

    @router.get("")
    def overview(
        request: Request,
        fleet: str = Query(default="", max_length=63),
        status: str = Query(default="", max_length=16),
        model: str = Query(default="", max_length=128),
        sort: str = Query(default="fleet", max_length=16),
        session: Session = Depends(access.session),
    ) -> HTMLResponse:
        now = service.clock()
        data = views.overview(
            store,
            now=now,
            connected_seconds=options.connected_seconds,
            fleet=fleet,
            status=status,
            model=model,
            sort=sort,
        )
        filters = {"fleet": fleet, "status": status, "model": model, "sort": sort}
        return render(
            request, "overview.html", session, page="overview", now=now, filters=filters, sorts=views.SORTS, **data
        )

    @router.get("/devices/{fleet}/{name}")
    def device(request: Request, fleet: str, name: str, session: Session = Depends(access.session)) -> HTMLResponse:
        now = service.clock()
        try:
            record = store.device(fleet, name)
            described = store.describe_device(fleet, name, now=now, connected_seconds=options.connected_seconds)
        except NotFound as exc:
            raise HTTPException(404, exc.one_line()) from None
        _, history = views.deployment_results(store, record.id)
        return render(
            request,
            "device.html",
            session,
            page="device",
            now=now,
            device=described,
            charts=views.device_charts(views.device_history(store, record.id)),
            batches=views.capture_batches(store, record.id),
            history=history.get((fleet, name), []),
        )

    @router.get("/devices/{fleet}/{name}/batches/{batch_id}/{index}.png")
    def thumbnail(
        fleet: str, name: str, batch_id: int, index: int, session: Session = Depends(access.session)
    ) -> Response:
        try:
            return Response(
                _thumbnail(store, service.objects, fleet, name, batch_id, index),
                media_type="image/png",
                headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"},
            )
        except (NotFound, thumbs.NoThumbnail) as exc:
            raise HTTPException(404, exc.one_line()) from None

    @router.get("/deployments")
    def deployments(request: Request, session: Session = Depends(access.session)) -> HTMLResponse:
        return render(request, "deployments.html", session, page="deployments", plans=views.deployment_plans(store))

    @router.get("/benchmarks")
    def benchmark_page(
        request: Request, target: str = Query(default="", max_length=63), session: Session = Depends(access.session)
    ) -> HTMLResponse:
        return render(request, "benchmarks.html", session, page="benchmarks", **benchmarks.page(tables, target))

    return router


def _thumbnail(store: Any, objects: Any, fleet: str, name: str, batch_id: int, index: int) -> bytes:
    """Record ``index`` of the device's batch ``batch_id``, read from the device's own prefix only."""
    from edgekiln.fleet.objects import check_relative_key

    record = store.device(fleet, name)
    key = views.batch_key(store, record.id, batch_id)
    if key is None:
        raise NotFound(f"no batch {batch_id} of {fleet}/{name}")
    prefix = f"{fleet}/{name}/"

    def read(full_key: str) -> bytes:
        size = objects.head(full_key)
        if size is None:
            raise thumbs.NoThumbnail("the captured object is not in the store")
        if size > thumbs.MAX_OBJECT_BYTES:
            raise thumbs.NoThumbnail(f"the captured object is over {thumbs.MAX_OBJECT_BYTES} bytes")
        return objects.get(full_key)

    def read_relative(relative: str) -> bytes:
        try:
            check_relative_key(relative)
        except UserError:
            raise thumbs.NoThumbnail("the record names an object outside the device's keys") from None
        return read(prefix + relative)

    try:
        return thumbs.thumbnail(read(key), index, read_relative)
    except ValueError as exc:  # bad base64 in the record
        raise thumbs.NoThumbnail(f"the captured input cannot be read: {exc}") from None


def benchmark_routes(service: Any, tables: DashboardTables) -> APIRouter:
    """The upload (admin token: CI jobs hold it) and a JSON listing."""
    router = APIRouter(dependencies=[Depends(service.auth.admin)])

    @router.post("/v1/benchmarks", status_code=201)
    def upload(body: benchmarks.BenchmarkUpload) -> dict[str, Any]:
        try:
            summary = benchmarks.summarize(body)
        except UserError as exc:
            raise HTTPException(400, exc.one_line()) from None
        upload_id = tables.add_benchmark(body.target, body.label, summary, service.clock())
        gate = summary["gate"]
        return {
            "id": upload_id,
            "target": body.target,
            "results": len(summary["results"]),
            "gate": None if gate is None else gate["passed"],
        }

    @router.get("/v1/benchmarks/{target}")
    def history(target: str, limit: int = Query(default=30, ge=1, le=1000)) -> dict[str, Any]:
        return {"target": target, "uploads": tables.benchmark_history(target, limit)}

    return router

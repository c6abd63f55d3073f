"""Who may open the dashboard: the admin, signed in with the admin credential.

Sign-in exchanges the admin token for a session cookie (random, HttpOnly, SameSite=Strict,
Secure when the service is told it sits behind HTTPS, path ``/dashboard``); the sessions
table holds only its hash, so sign-out ends it on every worker.  A device token opens
nothing here, as a bearer header or typed into the sign-in form.

Every state-changing request (sign-in, sign-out) must come from the dashboard's own pages:
its ``Origin`` (or, failing that, ``Sec-Fetch-Site``) must name this service, and a
signed-in form must carry the session's CSRF token.  SameSite alone is not enough: another
port on the same host is the same *site*, so its pages would send the cookie along.
"""

from __future__ import annotations

import hmac
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable

from fastapi import HTTPException, Request, Response

from edgekiln.fleet.dashboard.tables import DashboardTables, Session

COOKIE = "edgekiln_dashboard"
COOKIE_PATH = "/dashboard"
SESSION_SECONDS = 12 * 3600
MAX_FORM_BYTES = 4096


class SignInRequired(Exception):
    """No valid session: pages redirect to the sign-in page, the refresh script reloads."""


@dataclass(frozen=True)
class Access:
    """The dashboard's checks, over the fleet's admin token and device tokens."""

    admin_token: str
    tables: DashboardTables
    authenticate_device: Callable[[str], Any]
    clock: Callable[[], float]
    secure_cookie: bool = False

    def session(self, request: Request) -> Session:
        """The request's session; refuses device tokens, asks the rest to sign in."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip() and self.authenticate_device(token.strip()) is not None:
            raise HTTPException(403, "a device token cannot open the dashboard")
        session = self.tables.session(request.cookies.get(COOKIE, ""), self.clock())
        if session is None:
            raise SignInRequired()
        return session

    def sign_in(self, credential: str, response: Response) -> None:
        """Check ``credential`` and set the session cookie; HTTPException when refused."""
        if not hmac.compare_digest(credential.encode(), self.admin_token.encode()):
            if credential and self.authenticate_device(credential) is not None:
                raise HTTPException(403, "a device token cannot open the dashboard")
            raise HTTPException(401, "that is not the admin credential")
        token, _ = self.tables.open_session(self.clock(), SESSION_SECONDS)
        response.set_cookie(
            COOKIE,
            token,
            max_age=SESSION_SECONDS,
            path=COOKIE_PATH,
            httponly=True,
            samesite="strict",
            secure=self.secure_cookie,
        )

    def sign_out(self, session: Session, response: Response) -> None:
        self.tables.close_session(session)
        response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict", secure=self.secure_cookie)


def check_same_origin(request: Request) -> None:
    """Refuse a state-changing request that another site's page sent (403).

    Browsers mark every request with ``Sec-Fetch-Site`` (``same-origin`` from our own
    pages) and a POST with ``Origin`` — ``null`` under the pages' no-referrer policy, so
    ``null`` counts only where ``Sec-Fetch-Site`` vouches for it.  A request with neither
    header came from no browser (curl, a script), so no page of another site made it."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        raise HTTPException(403, "cross-site request refused")
    origin = request.headers.get("origin")
    if origin is None or (origin == "null" and fetch_site is not None):
        return
    parsed = urllib.parse.urlsplit(origin)
    if (parsed.scheme, parsed.netloc) != (request.url.scheme, request.headers.get("host")):
        raise HTTPException(403, "cross-site request refused")


async def read_form(request: Request) -> dict[str, str]:
    """A small urlencoded form (the dashboard's forms have one or two fields)."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise HTTPException(415, "expected a form (application/x-www-form-urlencoded)")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413, f"form is over {MAX_FORM_BYTES} bytes")
    try:
        pairs = urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=8)
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(400, "malformed form") from None
    return dict(pairs)


def check_csrf(session: Session, form: dict[str, str]) -> None:
    if not hmac.compare_digest(form.get("csrf", "").encode(), session.csrf.encode()):
        raise HTTPException(403, "the form's CSRF token does not match this session; reload the page")

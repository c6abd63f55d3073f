"""Bearer-token checks of the fleet service, as FastAPI dependencies.

The admin token is compared in constant time; a device token is looked up by its SHA-256
(only hashes are stored) and refused once revoked or past its expiry, each refusal noted
in the audit trail (at most once a minute per device).
"""

from __future__ import annotations

import hmac
from typing import Callable

from fastapi import Header, HTTPException

from edgekiln.fleet.options import FleetOptions
from edgekiln.fleet.records import Device
from edgekiln.fleet.store import FleetStore


class Auth:
    """The bearer-token checks, as FastAPI dependencies."""

    def __init__(self, options: FleetOptions, store: FleetStore, clock: Callable[[], float]) -> None:
        self.options = options
        self.store = store
        self.clock = clock

    @staticmethod
    def bearer(authorization: str) -> str:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        return token.strip()

    def admin(self, authorization: str = Header(default="")) -> None:
        token = self.bearer(authorization)
        if hmac.compare_digest(token.encode(), self.options.admin_token.encode()):
            return
        if self.store.authenticate(token) is not None:
            raise HTTPException(403, "a device token cannot use operator routes")
        raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": "Bearer"})

    def device(self, authorization: str = Header(default="")) -> Device:
        device = self.store.authenticate(self.bearer(authorization))
        if device is None:
            raise HTTPException(401, "unknown device token", headers={"WWW-Authenticate": "Bearer"})
        now = self.clock()
        refusal = None
        if device.revoked_at is not None:
            refusal = "revoked"
        elif device.token_expires_at is not None and now >= device.token_expires_at:
            refusal = "expired"
        if refusal:
            self.store.record_refusal(device, refusal, now)
            raise HTTPException(
                401,
                f"the token of {device.fleet}/{device.name} was {refusal}; "
                "the operator can issue a new one (edgekiln fleet device rotate)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return device

"""Downloading a package into staging over HTTP(S), resuming with Range after a cut.

The bytes already in ``<name>.part`` are kept across cuts and agent restarts; the next
request asks for the rest (``Range: bytes=N-``). A server that answers 200 instead of 206
sends the whole file again, which is taken from the start. Nothing is written past the
size the deployment announced, and the finished file must have the announced sha256, or
it is deleted.
"""

from __future__ import annotations

import http.client
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from edgekiln.agents.deploy.faults import checkpoint
from edgekiln.artifact.package import sha256_file
from edgekiln.errors import IntegrityError, UserError

CHUNK = 64 << 10
_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class DownloadInterrupted(UserError):
    """The transfer stopped early (network cut, server error); what arrived is kept."""


@dataclass
class Transfer:
    """Bytes received over the network for one file (what resuming saves shows here)."""

    received: int = 0
    requests: int = 0


def download(
    url: str, part: Path, size: int, sha256: str, *, timeout: float = 30.0, transfer: Transfer | None = None
) -> Path:
    """Fetch ``url`` into ``part`` (resuming) and return the finished file, renamed from
    ``part`` minus its ``.part`` suffix once its size and sha256 match."""
    transfer = transfer or Transfer()
    done = part.with_name(part.name.removesuffix(".part"))
    if done.is_file() and done.stat().st_size == size:
        return done
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        part.unlink()
        have = 0
    if have < size:
        _fetch(url, part, have, size, timeout, transfer)
    digest = sha256_file(part)
    if digest != sha256:
        part.unlink(missing_ok=True)
        raise IntegrityError(f"downloaded package has sha256 {digest[:16]}…; the deployment says {sha256[:16]}…")
    os.replace(part, done)
    return done


def _fetch(url: str, part: Path, have: int, size: int, timeout: float, transfer: Transfer) -> None:
    if not re.match(r"^https?://", url):
        raise UserError(f"package url {url[:80]!r} is not http(s)")
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    transfer.requests += 1
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            start = _start_of(response, have)
            with open(part, "r+b" if part.exists() else "wb") as out:
                out.truncate(start)
                out.seek(start)
                _copy(response, out, size - start, transfer)
                out.flush()
                os.fsync(out.fileno())
    except urllib.error.HTTPError as exc:
        if exc.code == 416:  # our offset is past what it has: start over
            part.unlink(missing_ok=True)
        raise DownloadInterrupted(f"package download: HTTP {exc.code}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as exc:
        raise DownloadInterrupted(f"package download cut: {getattr(exc, 'reason', exc)}") from None
    got = part.stat().st_size
    if got < size:
        raise DownloadInterrupted(f"package download cut at {got} of {size} bytes")


def _start_of(response: http.client.HTTPResponse, have: int) -> int:
    """Where the body starts: our offset on a 206 that says so, 0 on a 200."""
    if response.status == 206:
        match = _RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if not match or int(match.group(1)) != have:
            raise DownloadInterrupted("the server answered another range than the one asked for")
        return have
    return 0


def _copy(response: http.client.HTTPResponse, out: BinaryIO, remaining: int, transfer: Transfer) -> None:
    while remaining > 0:
        block = response.read(min(CHUNK, remaining))
        if not block:
            return
        out.write(block)
        remaining -= len(block)
        transfer.received += len(block)
        checkpoint("download")
    if response.read(1):
        raise IntegrityError("the server sent more bytes than the deployment's package_size")

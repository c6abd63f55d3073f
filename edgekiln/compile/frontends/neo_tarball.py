"""Extracting a Neo-style model tarball (``model.tar.gz``) with bounds.

The tarball is the user's upload and may come from anywhere: tarfile's ``data`` filter keeps
every member inside the destination (no absolute paths, ``..``, links that leave it, devices
or setuid bits); on top of that the members' total size and count are capped while the
archive streams, and sparse members (which unpack to far more than they hold) are refused.
"""

from __future__ import annotations

import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from edgekiln.artifact.package import bytes_from_env
from edgekiln.errors import UserError

MAX_BYTES_ENV = "EDGEKILN_MAX_MODEL_TARBALL_BYTES"


@dataclass(frozen=True)
class TarballLimits:
    """Bounds on what a model tarball may unpack to; ``max_bytes`` (default 4 GiB) can be
    raised with ``EDGEKILN_MAX_MODEL_TARBALL_BYTES`` for a larger model."""

    max_bytes: int = 4 << 30
    max_members: int = 10_000

    @classmethod
    def from_env(cls) -> TarballLimits:
        value = bytes_from_env(MAX_BYTES_ENV)
        return cls() if value is None else cls(max_bytes=value)


def extract(path: Path, dest: Path, limits: TarballLimits | None = None) -> None:
    """Extract ``path`` into the existing directory ``dest``; UserError for anything refused
    (the caller removes ``dest``)."""
    limits = limits or TarballLimits.from_env()
    try:
        # Stream mode: the archive is read once, front to back, and stops at the first refusal.
        with tarfile.open(path, mode="r|*") as tar:
            tar.extractall(dest, members=_bounded(tar, path, limits), filter="data")
    # KeyError: tarfile's answer to a hard link whose target is not in the archive.
    except (tarfile.TarError, OSError, EOFError, zlib.error, KeyError) as exc:
        raise UserError(f"{path} cannot be unpacked as a model tarball ({str(exc)[:200]})") from None


def _bounded(tar: tarfile.TarFile, path: Path, limits: TarballLimits) -> Iterator[tarfile.TarInfo]:
    total = 0
    for count, member in enumerate(tar, start=1):
        if count > limits.max_members:
            raise UserError(
                f"the model tarball {path} holds over {limits.max_members} members",
                hint="a model tarball holds the model's files only",
            )
        if member.issparse():
            raise UserError(
                f"the model tarball {path} holds a sparse member ({member.name[:80]})",
                hint="pack the files with tar without --sparse",
            )
        total += member.size
        if total > limits.max_bytes:
            raise UserError(
                f"the model tarball {path} unpacks to over {limits.max_bytes} bytes",
                hint=f"for a model this large, set {MAX_BYTES_ENV} to a higher byte count",
            )
        yield member

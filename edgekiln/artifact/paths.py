"""The one check for every path an artifact's manifest names.

A manifest comes from the artifact, so its paths are the attacker's: ``files[].path`` and
``labels`` must name a file inside the artifact, whether it is still packed (a tar member)
or extracted into a directory (where a symlink could lead out again). Packing, unpacking,
the runtime and the agent all go through these functions.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from edgekiln.errors import IntegrityError

MAX_PATH_CHARS = 255
MAX_LABELS_BYTES = 4 << 20  # 4 MiB: far above any class list (ImageNet's is 22 kB)


def check_member_path(name: object, what: str = "artifact path") -> str:
    """``name`` if it is a relative POSIX path that stays inside the artifact; IntegrityError otherwise.

    Refuses absolute paths, ``..`` anywhere, backslashes, NUL, empty or ``.`` components
    and paths that are not in normal form, before anything is opened.
    """
    if not isinstance(name, str) or not name:
        raise IntegrityError(f"{what} {name!r} is not a file name")
    if len(name) > MAX_PATH_CHARS:
        raise IntegrityError(f"{what} {name[:60]!r}… is over {MAX_PATH_CHARS} characters")
    if name.startswith("/") or "\\" in name or "\0" in name:
        raise IntegrityError(f"{what} {name!r} is absolute or not a POSIX path")
    parts = name.split("/")
    if posixpath.normpath(name) != name or any(part in ("", ".", "..") for part in parts):
        raise IntegrityError(f"{what} {name!r} escapes the artifact: it must be a normal relative path inside it")
    return name


def resolve_member(root: str | os.PathLike[str], name: object) -> Path:
    """``root/name`` for an extracted artifact, after :func:`check_member_path`, refusing a
    path that passes through a symlink (which could lead outside ``root``)."""
    relpath = check_member_path(name)
    root = Path(root)
    path = root
    for part in relpath.split("/"):
        path = path / part
        if path.is_symlink():
            raise IntegrityError(f"{relpath} in {root} passes through a symlink ({path.name})")
    return path


def read_labels(root: str | os.PathLike[str], name: str) -> list[str]:
    """The class names in the labels file ``name`` of the extracted artifact at ``root``:
    one per line, blank lines and ``#`` comments dropped; bounded in size."""
    path = resolve_member(root, name)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_LABELS_BYTES + 1)
    except OSError as exc:
        raise IntegrityError(f"cannot read the labels file {name}: {exc.strerror or exc}") from None
    return parse_labels(data, name)


def parse_labels(data: bytes, name: str = "labels") -> list[str]:
    """Class names from a labels file's bytes (for readers that hold the bytes already)."""
    if len(data) > MAX_LABELS_BYTES:
        raise IntegrityError(f"the labels file {name} is over {MAX_LABELS_BYTES >> 20} MiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise IntegrityError(f"the labels file {name} is not UTF-8 text") from None
    return [line for line in text.splitlines() if line and not line.startswith("#")]

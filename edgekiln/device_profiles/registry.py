"""Find device profiles by id or alias.

Shipped profiles are TOML files under ``edgekiln/device_profiles/data/<vendor>/<board>.toml``,
read with :mod:`importlib.resources` so they load from a wheel or zip as well as from a
source tree. They are read on the first lookup, not at import, and kept for the process.
"""

from __future__ import annotations

import difflib
import functools
import os
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Union

from edgekiln.device_profiles.schema import DeviceProfile
from edgekiln.errors import UserError

if sys.version_info >= (3, 11):
    from importlib.resources.abc import Traversable

    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    from importlib.abc import Traversable

    import tomli as tomllib

PathLike = Union[str, "os.PathLike[str]", Traversable]

_LIST_HINT = "`edgekiln profiles list` shows all device profiles"


def load_profile_file(path: PathLike) -> DeviceProfile:
    """Read and validate one profile TOML file (shipped or the user's own).

    Raises:
        UserError: the file cannot be read, is not valid TOML, or breaks the schema; the
            message names the file and the key.
    """
    source = str(path)
    file = Path(path) if isinstance(path, (str, os.PathLike)) else path
    try:
        text = file.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"device profile {source}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"device profile {source}: cannot read it: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"device profile {source}: not valid TOML: {exc}") from None
    return DeviceProfile.from_dict(data, source=source)


@dataclass(frozen=True)
class _Catalog:
    """Profiles sorted by id, and every lower-cased id and alias mapped to its profile."""

    profiles: tuple[DeviceProfile, ...]
    by_name: dict[str, DeviceProfile]
    # Original spellings, for suggestions: difflib matches on the lower-cased keys.
    names: dict[str, str]


def build_catalog(entries: Iterable[tuple[DeviceProfile, str]]) -> _Catalog:
    """Index ``(profile, source)`` pairs by id and alias.

    Names are compared case-insensitively, because users type them on command lines.

    Raises:
        UserError: two profiles share an id or alias (naming both files).
    """
    by_name: dict[str, DeviceProfile] = {}
    owner: dict[str, str] = {}
    names: dict[str, str] = {}
    for profile, source in entries:
        for name in (profile.id, *profile.aliases):
            key = name.casefold()
            if key in by_name:
                if by_name[key] is profile:
                    raise UserError(f"device profile {source}: '{name}' is listed twice in one profile")
                raise UserError(
                    f"device profile name '{name}' is used by both {owner[key]} "
                    f"({by_name[key].id}) and {source} ({profile.id}); ids and aliases "
                    "must be unique across all profiles"
                )
            by_name[key] = profile
            owner[key] = source
            names[key] = name
    profiles = tuple(sorted({p.id: p for p in by_name.values()}.values(), key=lambda p: p.id))
    return _Catalog(profiles=profiles, by_name=by_name, names=names)


def _shipped_files() -> list[tuple[str, Traversable]]:
    """``(vendor, file)`` for every shipped profile, in a stable order."""
    root = resources.files("edgekiln.device_profiles").joinpath("data")
    files = []
    for vendor in sorted(root.iterdir(), key=lambda t: t.name):
        if not vendor.is_dir() or vendor.name.startswith((".", "_")):
            continue
        for file in sorted(vendor.iterdir(), key=lambda t: t.name):
            if file.name.endswith(".toml"):
                files.append((vendor.name, file))
    return files


@functools.cache
def _catalog() -> _Catalog:
    entries = []
    for vendor, file in _shipped_files():
        profile = load_profile_file(file)
        expected = f"{vendor}/{file.name[: -len('.toml')]}"
        # The path is the id so that a profile is found in the tree by its name.
        if profile.id != expected:
            raise UserError(f"device profile {file}: id '{profile.id}' should be '{expected}'")
        entries.append((profile, str(file)))
    return build_catalog(entries)


def list_profiles() -> list[DeviceProfile]:
    """Every shipped device profile, sorted by id."""
    return list(_catalog().profiles)


def get_profile(name: str) -> DeviceProfile:
    """The profile with this id or alias, compared case-insensitively.

    A name ending in ``.toml`` is read as a profile file (:func:`load_profile_file`), so
    every command that takes a profile also takes a user's own.

    Raises:
        UserError: no profile has that name; the message lists close matches.
    """
    if name.endswith(".toml"):
        return load_profile_file(name)
    catalog = _catalog()
    key = name.strip().casefold()
    profile = catalog.by_name.get(key)
    if profile is not None:
        return profile
    suggestions = _close_matches(key, catalog)
    matches = f"; close matches: {', '.join(suggestions)}" if suggestions else ""
    raise UserError(f"unknown device profile '{name}'{matches}; {_LIST_HINT}")


def _close_matches(key: str, catalog: _Catalog, limit: int = 5) -> list[str]:
    keys = list(catalog.names)
    found = difflib.get_close_matches(key, keys, n=limit, cutoff=0.6)
    # difflib misses a short fragment of a long name ("orin" in "jetson_orin"); a
    # substring hit is as good a guess, the shortest name first as the closest.
    if len(key) >= 3:
        found += sorted((k for k in keys if key in k and k not in found), key=len)
    # One name per profile: three spellings of the same board are no help.
    suggestions: dict[str, str] = {}
    for k in found:
        suggestions.setdefault(catalog.by_name[k].id, catalog.names[k])
    return list(suggestions.values())[:limit]

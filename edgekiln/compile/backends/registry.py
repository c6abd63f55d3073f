"""Backends by name.  Registering the same name twice is a bug and raises."""

from __future__ import annotations

import difflib

from edgekiln.compile.backends.base import Backend
from edgekiln.errors import InternalError, UserError

_BACKENDS: dict[str, type[Backend]] = {}


def register(cls: type[Backend]) -> type[Backend]:
    """Class decorator adding a backend to the registry."""
    if cls.id in _BACKENDS:
        raise InternalError(f"backend {cls.id!r} is registered twice")
    _BACKENDS[cls.id] = cls
    return cls


def _load_builtin() -> None:
    # Importing a backend module registers it (once: Python caches modules); its heavy
    # imports stay inside its methods.
    import edgekiln.compile.backends.litert.backend  # noqa: F401
    import edgekiln.compile.backends.onnxruntime.backend  # noqa: F401
    import edgekiln.compile.backends.openvino.backend  # noqa: F401
    import edgekiln.compile.backends.tvm.backend  # noqa: F401


def names() -> list[str]:
    _load_builtin()
    return sorted(_BACKENDS)


def get(name: str) -> Backend:
    """A new instance of the backend called ``name``."""
    _load_builtin()
    try:
        return _BACKENDS[name]()
    except KeyError:
        close = difflib.get_close_matches(name, list(_BACKENDS), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(f"unknown backend {name!r}; {hint}available: {', '.join(sorted(_BACKENDS))}") from None

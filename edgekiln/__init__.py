"""edgekiln: compile image classifiers per device profile, run them with a small runtime.

Heavy parts load lazily: ``import edgekiln`` imports neither the compiler nor a runtime
backend, so a device install stays small and fast to start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "compile_model", "load"]

if TYPE_CHECKING:  # pragma: no cover
    from edgekiln.compile.api import compile_model
    from edgekiln.runtime.model import load


def __getattr__(name: str) -> Any:
    # Lazy re-exports (PEP 562): the compiler must not load when a device imports edgekiln.
    if name == "compile_model":
        from edgekiln.compile.api import compile_model

        return compile_model
    if name == "load":
        from edgekiln.runtime.model import load

        return load
    raise AttributeError(f"module 'edgekiln' has no attribute {name!r}")

"""The on-device runtime: loads artifacts and runs them.

Imports only numpy, the standard library and (lazily) apache-tvm-ffi and Pillow; never the
TVM compiler, onnx, torch or tensorflow, so that a device installs edgekiln without extras.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Model", "load"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from edgekiln.runtime import model

        return getattr(model, name)
    raise AttributeError(f"module 'edgekiln.runtime' has no attribute {name!r}")

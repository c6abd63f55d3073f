"""Where the native runtime (libedgekiln and edgekiln-run) of each CPU architecture is kept
once built, and which version it is.

The sources ship with edgekiln (``edgekiln/native``); ``edgekiln build-runtime`` compiles
them with the TVM runtime and tvm-ffi for one architecture into
``<cache root>/native-runtime/<arch>/<version>/``. The version names edgekiln's release,
the TVM release whose runtime sources went in, and a digest of edgekiln's own native
sources, so that a changed source never reuses an old build.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from edgekiln.runtime.compat import cache_root

SOURCE_DIR = Path(__file__).resolve().parent.parent / "native"
LIBRARY = "lib/libedgekiln.so"
RUNNER = "bin/edgekiln-run"
HEADER = "include/edgekiln/dlr.h"
BUILD_INFO = "build.json"


@dataclass(frozen=True)
class NativeRuntime:
    """A built native runtime: its folder and the files an artifact or an application uses."""

    arch: str
    version: str
    root: Path

    @property
    def library(self) -> Path:
        return self.root / LIBRARY

    @property
    def runner(self) -> Path:
        return self.root / RUNNER

    @property
    def header(self) -> Path:
        return self.root / HEADER


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """sha256 over the native sources' relative paths and bytes (first 10 hex digits)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in SOURCE_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(SOURCE_DIR)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:10]


def native_version() -> str:
    """``<edgekiln>+tvm<apache-tvm>.ffi<apache-tvm-ffi>.<source digest>``, e.g.
    ``0.1.0+tvm0.27.0.post1.ffi0.1.14.post0.3f2a…``: the build compiles both wheels' sources,
    so a build from other versions is another build."""
    from edgekiln import __version__

    versions = []
    for package in ("apache-tvm", "apache-tvm-ffi"):
        try:
            versions.append(metadata.version(package))
        except metadata.PackageNotFoundError:
            versions.append("unknown")
    return f"{__version__}+tvm{versions[0]}.ffi{versions[1]}.{source_digest()}"


def build_dir(arch: str) -> Path:
    return cache_root() / "native-runtime" / arch / native_version()


def find_native_runtime(arch: str) -> NativeRuntime | None:
    """The native runtime built for ``arch`` from these sources, or None when there is none yet."""
    root = build_dir(arch)
    if not (root / BUILD_INFO).is_file():
        return None
    return NativeRuntime(arch, native_version(), root)

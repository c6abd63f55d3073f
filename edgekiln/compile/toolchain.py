"""The profile's C/C++ toolchain on the build host: the cross compiler its profile names
(the host's own g++ for a native profile) and the tools of the same toolchain beside it.
The TVM backend links model libraries with it; ``edgekiln build-runtime`` builds the
native runtime with it."""

from __future__ import annotations

import shutil

from edgekiln.device_profiles import DeviceProfile
from edgekiln.errors import DependencyError


def find_tools(profile: DeviceProfile, *names: str) -> tuple[str, ...]:
    """The profile's C++ compiler, then each tool of ``names`` (``gcc``, ``strip``) of the
    same toolchain (the compiler's target prefix), each checked to be installed."""
    cxx = profile.toolchain.cc or "g++"
    prefix = cxx[: -len("g++")] if cxx.endswith("g++") else ""
    tools = (cxx, *(prefix + name for name in names))
    for tool in tools:
        if shutil.which(tool) is None:
            package = profile.toolchain.debian_package or "g++"
            raise DependencyError(f"the toolchain for {profile.id} lacks {tool}", hint=f"apt-get install {package}")
    return tools

"""Device profiles: what edgekiln knows about each kind of device it compiles for.

``get_profile("rasp4b")`` finds a shipped profile by id or alias (or reads a ``.toml``
file); ``list_profiles()`` lists them. Nothing is read until the first call.
"""

from edgekiln.device_profiles.registry import get_profile, list_profiles, load_profile_file
from edgekiln.device_profiles.schema import (
    AcceleratorSpec,
    CpuSpec,
    DeviceProfile,
    EmulationSpec,
    PythonSpec,
    ToolchainSpec,
)

__all__ = [
    "AcceleratorSpec",
    "CpuSpec",
    "DeviceProfile",
    "EmulationSpec",
    "PythonSpec",
    "ToolchainSpec",
    "get_profile",
    "list_profiles",
    "load_profile_file",
]

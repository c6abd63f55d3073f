"""The one skeleton every backend follows.

A backend turns a :class:`SourceModel` into files for one :class:`DeviceProfile`.  It says
whether it can serve a profile (and why not), lowers into a staging directory, and
describes what the device needs to run the result.  Packing, validation and the manifest
are the compile driver's job, the same for every backend.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

from edgekiln.artifact.manifest import RuntimeRequirements
from edgekiln.compile.frontends.onnx import SourceModel
from edgekiln.device_profiles import DeviceProfile
from edgekiln.execute.progress import Progress


@dataclass(frozen=True)
class LoweredFiles:
    """What a backend produced: files (relative path → role) under the staging root."""

    files: Mapping[str, str]
    runtime: RuntimeRequirements
    compiler: Mapping[str, str]
    target: Mapping[str, Any]
    options: Mapping[str, Any] = field(default_factory=dict)


class Backend(abc.ABC):
    """Base class of backends; subclasses set ``id`` and ``options_type``."""

    id: ClassVar[str]
    options_type: ClassVar[type]

    @abc.abstractmethod
    def supports(self, profile: DeviceProfile) -> str | None:
        """None when the backend can build for ``profile``, else the reason it cannot."""

    @abc.abstractmethod
    def lower(
        self, model: SourceModel, profile: DeviceProfile, options: Any, root: Path, progress: Progress
    ) -> LoweredFiles:
        """Build ``model`` for ``profile`` into ``root``; raise BackendError on failure."""

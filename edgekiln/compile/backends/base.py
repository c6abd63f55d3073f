"""The one skeleton every backend follows.

A backend turns a :class:`SourceModel` into files for one :class:`DeviceProfile`.  It says
whether it can serve a profile (and why not), lowers into a staging directory, and
describes what the device needs to run the result.  What it can do beyond that it declares
as class attributes, which the compile driver reads (it names no backend itself).  Packing,
validation and the manifest are the driver's job, the same for every backend.
"""

from __future__ import annotations

import abc
import dataclasses
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Mapping, Sequence

from edgekiln.compile.stages import LoweredFiles, SourceModel
from edgekiln.device_profiles import DeviceProfile
from edgekiln.errors import UserError
from edgekiln.execute.progress import Progress

if TYPE_CHECKING:
    from edgekiln.compile.quantize.data import Dataset


@dataclass(frozen=True)
class BackendOptions:
    """Base of every backend's options: a frozen dataclass whose fields are checked against
    their annotations when it is made, and read from a dict or ``KEY=VALUE`` strings with
    the valid keys listed on any mistake.  Subclasses add value checks in ``check``."""

    backend: ClassVar[str] = "?"  # the backend's id, for messages

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, os.PathLike) and _allows(hints[f.name], str):
                value = os.fspath(value)
                object.__setattr__(self, f.name, value)
            if not _matches(hints[f.name], value):
                raise UserError(
                    f"{self.backend} backend option {f.name} must be {_describe(hints[f.name])}, "
                    f"got {value!r}; valid options: {', '.join(self.keys())}"
                )
        self.check()

    def check(self) -> None:
        """Value checks beyond the types (ranges, choices); raise UserError."""

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> BackendOptions:
        """Options from a mapping; an unknown key or a wrong type is a UserError."""
        data = dict(data or {})
        unknown = sorted(set(data) - set(cls.keys()))
        if unknown:
            raise UserError(
                f"unknown {cls.backend} backend option(s) {', '.join(unknown)}; valid options: {', '.join(cls.keys())}"
            )
        return cls(**data)

    @classmethod
    def from_strings(cls, items: Sequence[str]) -> BackendOptions:
        """Options from ``KEY=VALUE`` strings (``--backend-option``), each value read as
        its field's type: ``true``/``false``, an integer, ``none``, or text."""
        hints = typing.get_type_hints(cls)
        data: dict[str, Any] = {}
        for item in items:
            key, sep, text = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or not key:
                raise UserError(
                    f"--backend-option {item!r} is not KEY=VALUE; valid {cls.backend} options: {', '.join(cls.keys())}"
                )
            data[key] = _parse(text.strip(), hints.get(key))
        return cls.from_dict(data)


def _args(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _allows(hint: Any, kind: type) -> bool:
    return kind in _args(hint)


def _matches(hint: Any, value: Any) -> bool:
    for arg in _args(hint):
        if arg is type(None) and value is None:
            return True
        if typing.get_origin(arg) is Literal and value in typing.get_args(arg):
            return True
        if arg is bool and isinstance(value, bool):
            return True
        if arg is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if arg is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if arg is str and isinstance(value, str):
            return True
    return False


def _describe(hint: Any) -> str:
    words = {bool: "true or false", int: "an integer", float: "a number", str: "text", type(None): "absent"}
    parts = []
    for arg in _args(hint):
        if typing.get_origin(arg) is Literal:
            parts.append("one of " + ", ".join(repr(a) for a in typing.get_args(arg)))
        else:
            parts.append(words.get(arg, getattr(arg, "__name__", str(arg))))
    return " or ".join(parts)


def _parse(text: str, hint: Any) -> Any:
    if hint is None:
        return text  # an unknown key: from_dict names it
    lowered = text.lower()
    if lowered in ("none", "null", "") and _allows(hint, type(None)):
        return None
    if _allows(hint, bool) and lowered in ("true", "false", "yes", "no", "1", "0"):
        return lowered in ("true", "yes", "1")
    if _allows(hint, int):
        try:
            return int(text)
        except ValueError:
            pass
    return text  # the type check in __post_init__ reports what does not fit


class Backend(abc.ABC):
    """Base class of backends; subclasses set ``id``, ``options_type`` and their capabilities."""

    id: ClassVar[str]
    options_type: ClassVar[type[BackendOptions]]
    # How the backend builds int8 artifacts: "qdq" compiles the int8 QDQ ONNX model that
    # compile/quantize/ made and gated; "self" quantizes by itself from calibration data
    # handed to lower(), and the gate then runs the artifact; None builds no int8 models.
    quantization: ClassVar[Literal["qdq", "self"] | None] = None
    # The emulated boards carry this backend's device runtime, so its artifacts for a
    # foreign CPU can be validated there. Coarse: compile checks the artifact's own runtime
    # requirements against the board's packages (compile/validate_on.py).
    runs_on_emulated_board: ClassVar[bool] = False

    @classmethod
    def needs_calibration(cls) -> bool:
        """lower() wants the calibration inputs when it builds an int8 model."""
        return cls.quantization == "self"

    @classmethod
    def can_quantize(cls, auto: bool) -> bool:
        """Whether it builds int8 models as ``--quantize int8`` (or ``int8-auto``) asks:
        keeping layers in fp32 until the gate passes needs the QDQ model to edit."""
        return cls.quantization == "qdq" or (cls.quantization == "self" and not auto)

    @abc.abstractmethod
    def supports(self, profile: DeviceProfile) -> str | None:
        """None when the backend can build for ``profile``, else the reason it cannot."""

    @abc.abstractmethod
    def lower(
        self,
        model: SourceModel,
        profile: DeviceProfile,
        options: Any,
        root: Path,
        progress: Progress,
        calibration: Dataset | None = None,
    ) -> LoweredFiles:
        """Build ``model`` for ``profile`` into ``root``; raise BackendError on failure.

        ``calibration`` is given to backends that quantize by themselves when an int8
        model is asked for."""

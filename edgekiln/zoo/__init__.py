"""The built-in model zoo: torchvision's ResNet and MobileNet classifiers as ONNX graphs.

The graphs are built in code with seeded random weights (:mod:`edgekiln.zoo.models`);
nothing is downloaded, ever. They have torchvision's exact architectures, parameter counts
and MAC counts, so they stand in for the real models wherever what matters is the shape
of the work (compiling, validating numerics, benchmarking), not the predictions.

Models are named as in torchvision (``resnet18``) or referred to as ``zoo:resnet18``
wherever a model file is expected. Importing this package imports neither onnx nor
numpy; :func:`build` does, when called.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgekiln.errors import DependencyError, UserError

if TYPE_CHECKING:  # pragma: no cover
    from importlib.resources.abc import Traversable

    import onnx

__all__ = [
    "MODEL_NAMES",
    "ZOO_PREFIX",
    "ZooModel",
    "build",
    "imagenet_labels",
    "info",
    "is_zoo_ref",
    "preprocessing",
    "sample_image_path",
]

ZOO_PREFIX = "zoo:"

MODEL_NAMES: tuple[str, ...] = (
    "resnet18",
    "resnet50",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
)

# torchvision's ImageNet evaluation transform (ImageClassification preset): resize the
# short side to 256, centre-crop 224, scale to [0, 1], normalize per channel. The V2
# weights of some torchvision models resize to 232 instead; with random weights the
# classic 256 is the one to mirror.
_IMAGENET_PREPROCESSING: dict[str, Any] = {
    "layout": "NCHW",
    "color": "RGB",
    "resize": 256,
    "crop": 224,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "scale": 1 / 255,
}


def _fresh_preprocessing() -> dict[str, Any]:
    # Deep: the mean and std lists are as mutable as the dict that holds them.
    return copy.deepcopy(_IMAGENET_PREPROCESSING)


@dataclass(frozen=True, kw_only=True)
class ZooModel:
    """What the zoo knows about one model without building it.

    ``published_params`` is torchvision's ``num_params``. ``published_macs`` is the exact
    multiply-accumulate count of the graph under the fvcore convention, which torchvision
    publishes rounded as ``_ops`` (the "GFLOPS" column of its model table, in fact GMACs);
    the tests check that :func:`edgekiln.compile.analysis.count_params` and ``count_macs``
    of the built graph equal both. ``source`` names the torchvision builder it mirrors.
    """

    name: str
    input_name: str = "input"
    output_name: str = "logits"
    input_shape: tuple[int, ...] = (1, 3, 224, 224)
    num_classes: int = 1000
    published_params: int
    published_macs: int
    preprocessing: dict[str, Any] = field(default_factory=_fresh_preprocessing)
    source: str


def _entry(name: str, params: int, macs: int) -> ZooModel:
    return ZooModel(name=name, published_params=params, published_macs=macs, source=f"torchvision.models.{name}")


# Parameter counts: torchvision 0.29.1 weights metadata "num_params" (resnet.py,
# mobilenetv2.py, mobilenetv3.py). MACs: torchvision's "_ops" (GFLOPS column) there are
# 1.814, 4.089, 0.301, 0.057, 0.217; the exact counts below are what
# edgekiln.compile.analysis.count_macs yields for the graphs and they round to those.
_MODELS: dict[str, ZooModel] = {
    m.name: m
    for m in (
        _entry("resnet18", 11_689_512, 1_814_073_344),
        _entry("resnet50", 25_557_032, 4_089_184_256),
        _entry("mobilenet_v2", 3_504_872, 300_774_272),
        _entry("mobilenet_v3_small", 2_542_856, 56_510_400),
        _entry("mobilenet_v3_large", 5_483_032, 216_589_760),
    )
}


def is_zoo_ref(ref: object) -> bool:
    """Whether ``ref`` is a zoo reference such as ``"zoo:resnet18"``.

    Only the ``zoo:`` prefix makes a reference: a bare ``"resnet18"`` could be a file
    name. An unknown name after the prefix is still a zoo reference, so that
    :func:`build` reports it with the valid names rather than as a missing file.
    """
    return isinstance(ref, str) and ref.strip().lower().startswith(ZOO_PREFIX)


def _resolve(name_or_ref: str) -> str:
    if not isinstance(name_or_ref, str):
        raise UserError(f"a zoo model name must be a string, not {type(name_or_ref).__name__}")
    name = name_or_ref.strip()
    if name.lower().startswith(ZOO_PREFIX):
        name = name[len(ZOO_PREFIX) :]
    # Forgive case and dashes ("MobileNet-V2"), which users copy from papers.
    key = name.strip().lower().replace("-", "_")
    if key in _MODELS:
        return key
    close = difflib.get_close_matches(key, MODEL_NAMES, n=3, cutoff=0.5)
    ordered = close + [n for n in MODEL_NAMES if n not in close]
    suggestion = f"did you mean {close[0]!r}? " if close else ""
    raise UserError(
        f"unknown zoo model {name!r}; {suggestion}valid names: {', '.join(ordered)}",
        hint="list them with: edgekiln zoo list",
    )


def info(name: str) -> ZooModel:
    """Describe a zoo model without building it.

    Args:
        name: a model name (``"resnet18"``) or reference (``"zoo:resnet18"``).

    Returns:
        The :class:`ZooModel`; its ``preprocessing`` dict is a fresh copy.

    Raises:
        UserError: the name is not in the zoo; the message lists the valid names.
    """
    # A fresh dict each time: the dataclass is frozen, but a dict inside it is not.
    return dataclasses.replace(_MODELS[_resolve(name)], preprocessing=_fresh_preprocessing())


def preprocessing(name: str) -> dict[str, Any]:
    """The input preprocessing a zoo model expects (a fresh dict the caller may change).

    Keys: ``layout`` ("NCHW"), ``color`` ("RGB"), ``resize`` (short side, pixels), ``crop``
    (centre crop, pixels), ``mean`` and ``std`` (per channel, applied after ``scale``) and
    ``scale`` (1/255, from 8-bit pixels to [0, 1]).
    """
    return info(name).preprocessing


def build(name_or_ref: str, *, seed: int = 0) -> onnx.ModelProto:
    """Build a zoo model as an ONNX graph with seeded random weights.

    The same name and seed give byte-identical models; different seeds give different
    weights. Nothing is downloaded and nothing is written.

    Args:
        name_or_ref: ``"resnet18"`` or ``"zoo:resnet18"`` (see :data:`MODEL_NAMES`).
        seed: the seed of ``numpy.random.default_rng`` the weights are drawn from.

    Returns:
        An opset-17 ``onnx.ModelProto`` with one float32 input ``"input"`` of shape
        (1, 3, 224, 224) and one output ``"logits"`` of shape (1, 1000).

    Raises:
        UserError: the name is not in the zoo, or the seed is not a non-negative integer.
        DependencyError: onnx or numpy is not installed.
    """
    name = _resolve(name_or_ref)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserError(f"the zoo seed must be a non-negative integer, not {seed!r}")
    try:
        import numpy  # noqa: F401 - what models imports; checked here to name the extra
        import onnx  # noqa: F401
    except ImportError as exc:
        raise DependencyError(
            f"building zoo models needs onnx and numpy ({exc.name or exc} is missing)",
            hint="pip install 'edgekiln[compile]'",
        ) from exc
    from edgekiln.zoo import models

    return models.BUILDERS[name](seed, _MODELS[name].source)


@functools.lru_cache(maxsize=1)
def _labels() -> tuple[str, ...]:
    from importlib.resources import files

    text = (files(__name__) / "data" / "imagenet_labels.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line and not line.startswith("#"))


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names, in class-index order (torchvision's names)."""
    return list(_labels())


def sample_image_path() -> Traversable:
    """The bundled sample picture (``data/sample.png``, 224x224 RGB) as a resource path.

    It is a :class:`pathlib.Path` when edgekiln is installed as files (the usual case);
    use :func:`importlib.resources.as_file` where a real file is required in every case.
    """
    from importlib.resources import files

    return files(__name__) / "data" / "sample.png"

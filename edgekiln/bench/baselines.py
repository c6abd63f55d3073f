"""Baselines: other runtimes that run the artifact's source model beside it.

A baseline needs the model the artifact was compiled from, with the artifact's input shapes:

- **zoo models** are rebuilt from the built-in zoo (the manifest's ``model.name``) and
  accepted only when the rebuilt graph's sha256 equals ``model.source_sha256``, so a changed
  zoo can never be compared silently with an artifact built from an older one;
- **user models** come from ``--baseline-model PATH`` (any framework compile takes), with the same sha256 check.

int8 artifacts are compared with the fp32 source model (that is the comparison a user
makes when choosing int8); their manifest's sha256 may name the quantized graph, so for
them a zoo model is matched by name.

Baselines run as each runtime comes by default (threads, graph optimizations), except
OpenVINO, which is held to fp32 (see :mod:`edgekiln.execute.worker`).
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekiln.artifact.manifest import Manifest
from edgekiln.errors import DependencyError, UserError


@dataclass(frozen=True)
class Baseline:
    """One baseline runtime."""

    id: str
    module: str  # what must be importable
    pip: str  # how to install it
    devices: tuple[str, ...]
    description: str


BASELINES: dict[str, Baseline] = {
    b.id: b
    for b in (
        Baseline(
            "onnxruntime",
            "onnxruntime",
            "pip install onnxruntime (onnxruntime-gpu for CUDA)",
            ("cpu", "cuda"),
            "ONNX Runtime, default session options",
        ),
        Baseline(
            "openvino",
            "openvino",
            "pip install 'edgekiln[bench]' (or pip install openvino)",
            ("cpu",),
            "OpenVINO on the CPU, fp32 inference precision",
        ),
        Baseline(
            "torch",
            "torch",
            "pip install torch (CPU build: pip install torch==2.13.0)",
            ("cpu", "cuda"),
            "PyTorch eager, the same graph op for op",
        ),
        Baseline(
            "torch-compile",
            "torch",
            "pip install torch (CPU build: pip install torch==2.13.0)",
            ("cpu", "cuda"),
            "torch.compile of the same graph (GPU: fp16 with CUDA graphs)",
        ),
    )
}
NONE = "none"
CHOICES = (*BASELINES, NONE)


def check(name: str, device: str) -> Baseline:
    """The baseline ``name``, after checking that it can run here on ``device``."""
    baseline = BASELINES.get(name)
    if baseline is None:
        raise UserError(f"unknown baseline {name!r}", hint=f"choose from {', '.join(CHOICES)}")
    if device not in baseline.devices:
        raise UserError(f"baseline {name} cannot run on {device}", hint=f"it runs on {', '.join(baseline.devices)}")
    if importlib.util.find_spec(baseline.module) is None:
        raise DependencyError(
            f"baseline {name} needs the Python package {baseline.module}, which is not installed", hint=baseline.pip
        )
    return baseline


def subject(name: str, onnx_path: Path, device: str) -> dict[str, Any]:
    """The worker subject that runs baseline ``name`` on ``onnx_path``."""
    return {"kind": name, "model": str(onnx_path), "device": device}


@dataclass(frozen=True)
class SourceModelFile:
    """The baseline's model: a fixed-shape ONNX file and how it was matched to the artifact."""

    path: Path
    origin: str  # "zoo:resnet18" or the user's path
    check: str  # how it was matched: "sha256" or "name (int8 artifact)"
    macs: int | None
    size_bytes: int


def _is_quantized(manifest: Manifest) -> bool:
    quantization = getattr(manifest, "quantization", None)
    return bool(quantization) and str(quantization.get("mode", "int8")) != "fp32"


def source_model(manifest: Manifest, workdir: Path, baseline_model: str | Path | None = None) -> SourceModelFile:
    """Find the model ``manifest``'s artifact was compiled from and write it, with the
    artifact's input shapes, under ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    info = manifest.model
    quantized = _is_quantized(manifest)
    if baseline_model is not None:
        from edgekiln.compile.frontends import source_sha256

        path = Path(baseline_model)
        if not path.exists():
            raise UserError(f"baseline model {path} does not exist")
        digest = source_sha256(path)
        if digest != info.source_sha256 and not quantized:
            raise UserError(
                f"{path} is not the model this artifact was compiled from (sha256 {digest[:12]}…, "
                f"the manifest says {info.source_sha256[:12]}…)",
                hint="give the model file (or tarball) that was compiled",
            )
        return _fix_shapes(
            path,
            manifest,
            workdir,
            str(path),
            "sha256"
            if digest == info.source_sha256
            else "none (int8 artifact; the manifest's sha256 is of the quantized graph)",
        )
    if info.source_format != "zoo":
        raise UserError(
            f"the artifact was compiled from a {info.source_format} model ({info.name}); a baseline needs that model",
            hint="give it with --baseline-model PATH, or use --baseline none",
        )
    from edgekiln import zoo
    from edgekiln.zoo import pretrained

    names = [info.name] + [n for n in zoo.MODEL_NAMES if n != info.name]
    for name in names:
        if name in pretrained.PRETRAINED:  # zoo:efficientnet_lite0, with its trained weights
            raw = pretrained.build(name).SerializeToString()
        elif name in zoo.MODEL_NAMES:
            raw = zoo.build(name).SerializeToString()
        else:
            continue
        digest = hashlib.sha256(raw).hexdigest()
        if digest == info.source_sha256 or (quantized and name == info.name):
            path = workdir / f"{name}.onnx"
            path.write_bytes(raw)
            return _fix_shapes(
                path,
                manifest,
                workdir,
                f"zoo:{name}",
                "sha256" if digest == info.source_sha256 else "name (int8 artifact)",
            )
    raise UserError(
        f"no zoo model rebuilds the source of this artifact (model {info.name}, sha256 {info.source_sha256[:12]}…): "
        "the zoo changed since it was compiled",
        hint="recompile the artifact, or give the source with --baseline-model PATH",
    )


def _fix_shapes(path: Path, manifest: Manifest, workdir: Path, origin: str, check: str) -> SourceModelFile:
    # The frontends that compile uses: the same ONNX graph, fixed shapes and statistics, from
    # a model of any framework (a TFLite or PyTorch source is imported again).
    from edgekiln.compile.frontends import FRAMEWORKS, import_model

    shapes = {t.name: list(t.shape) for t in manifest.inputs}
    framework = manifest.model.source_format if manifest.model.source_format in FRAMEWORKS else None
    source = import_model(path, workdir / "baseline", framework=framework, input_shape=shapes)
    return SourceModelFile(
        path=source.path,
        origin=origin,
        check=check,
        macs=source.stats.get("macs"),
        size_bytes=source.path.stat().st_size,
    )

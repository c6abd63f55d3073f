"""``compile_model``: model file → artifact for one device profile.

Stages, each with its own type: ``SourceModel`` (import) → ``LoweredFiles`` (backend) →
``CompiledArtifact`` (validated, packed).  Work happens in a private temporary directory;
the output path only ever receives a complete, validated artifact.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgekiln import __version__
from edgekiln.artifact.manifest import Manifest, ModelInfo, Validation
from edgekiln.artifact.package import file_entry, pack, read_manifest
from edgekiln.compile import auto, validate
from edgekiln.compile.backends import registry
from edgekiln.compile.frontends import import_model
from edgekiln.compile.frontends.onnx import InputShapes, SourceModel
from edgekiln.compile.quantize import QuantizedModel, QuantizeOptions, gate_artifact, load_data, quantize_onnx
from edgekiln.device_profiles import DeviceProfile, get_profile
from edgekiln.errors import UserError
from edgekiln.execute.host import cannot_execute
from edgekiln.execute.progress import NullProgress, Progress
from edgekiln.execute.runners import EmulatedRunner, LocalRunner, Runner, emulated_board_problem
from edgekiln.runtime import compat

LABELS_FILE = "labels.txt"
# Backends whose artifacts run the QDQ int8 ONNX model from quantize/, and backends that
# quantize by themselves from calibration data (LiteRT writes its own int8 flatbuffer).
QDQ_BACKENDS = ("onnxruntime", "tvm")
SELF_QUANTIZING_BACKENDS = ("litert",)
QUANTIZING_BACKENDS = QDQ_BACKENDS + SELF_QUANTIZING_BACKENDS


@dataclass(frozen=True)
class CompileOptions:
    """Typed options of one compile; ``backend="auto"`` picks one (see compile/auto.py)."""

    backend: str = "auto"
    backend_options: Mapping[str, Any] = field(default_factory=dict)
    validation: validate.ValidationOptions = field(default_factory=validate.ValidationOptions)
    validate: bool = True
    quantize: QuantizeOptions | None = None


@dataclass(frozen=True)
class CompiledArtifact:
    """The result of a compile: where the artifact is and what its manifest says."""

    path: Path
    manifest: Manifest
    size: int

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "CompiledArtifact":
        path = Path(path)
        return cls(path=path, manifest=read_manifest(path), size=path.stat().st_size)

    def summary(self) -> dict[str, Any]:
        """The figures a CI job reads (``edgekiln compile --json``)."""
        m = self.manifest
        return {
            "artifact": str(self.path),
            "size_bytes": self.size,
            "model": m.model.name,
            "version": m.model.version,
            "profile": m.profile,
            "backend": m.backend,
            "backend_selection": m.extra.get("backend_selection"),
            "target_triple": m.target_triple,
            "cuda_arch": m.runtime.cuda_arch,
            "inputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in m.inputs],
            "outputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in m.outputs],
            "validation": m.to_dict()["validation"],
            "compile_seconds": m.extra.get("compile_seconds"),
            "quantization": m.quantization,
        }


def host_can_execute(profile: DeviceProfile) -> str | None:
    """None when this machine can run artifacts for ``profile``, else why not."""
    from edgekiln.compile.backends.tvm.backend import required_cpu_features

    return cannot_execute(profile, required_cpu_features(profile))


def compile_model(
    model: str | os.PathLike[str],
    target: str,
    output: str | os.PathLike[str],
    *,
    input_shape: InputShapes = None,
    name: str | None = None,
    version: str = "1",
    options: CompileOptions | None = None,
    progress: Progress | None = None,
    framework: str | None = None,
) -> CompiledArtifact:
    """Compile ``model`` for the profile ``target``.

    ``model`` is a model file or folder of any framework in ``frontends.FRAMEWORKS``, a
    Neo-style ``.tar.gz`` of one, or ``zoo:NAME``; ``framework`` is found from the files
    when None. ``input_shape`` is a Neo ``DataInputConfig`` (see ``frontends.parse_input_config``).

    Writes the artifact to ``output`` (a ``.tar.gz``) only after it was built and, where this
    machine can run the target, validated against ONNX Runtime.
    """
    import time

    started = time.perf_counter()
    options = options or CompileOptions()
    progress = progress or NullProgress()
    output = Path(output)
    if output.is_dir():
        raise UserError(f"output path {output} is a directory", hint="give a file name such as model.tar.gz")
    if not output.parent.exists():
        raise UserError(f"the directory of the output path {output} does not exist")
    profile = get_profile(target)
    if options.backend == auto.AUTO:
        def compile_one(backend: str, path: Path) -> CompiledArtifact:
            return compile_model(model, target, path, input_shape=input_shape, name=name, version=version,
                                 options=replace(options, backend=backend), progress=progress, framework=framework)

        from edgekiln import zoo
        from edgekiln.zoo import pretrained

        with tempfile.TemporaryDirectory(prefix="edgekiln-auto-source-") as tmp:
            baseline_model = None if zoo.is_zoo_ref(str(model)) else str(model)
            if pretrained.is_pretrained_ref(str(model)):
                # The harness rebuilds seeded zoo models itself; a pretrained one it is given.
                baseline_model = str(Path(tmp) / "source.onnx")
                Path(baseline_model).write_bytes(pretrained.build(str(model)).SerializeToString())
            return auto.compile_auto(compile_one, profile, output, options.quantize, baseline_model,
                                     host_can_execute(profile), progress)
    backend = registry.get(options.backend)
    reason = backend.supports(profile)
    if reason:
        raise UserError(f"backend {backend.id} cannot build for {profile.id}: {reason}")
    backend_options_dict = dict(options.backend_options)
    if options.validation.tolerance_abs < 0 or options.validation.samples < 1:
        raise UserError("the validation tolerance must be >= 0 and the sample count >= 1")
    # Nothing is written next to the output until the final rename in pack().
    work = Path(tempfile.mkdtemp(prefix="edgekiln-compile-"))
    try:
        with progress.step(f"import {model}"):
            source = import_model(model, work / "source", framework=framework, input_shape=input_shape, name=name)
        quantized: QuantizedModel | None = None
        reference = source
        gate_data = None
        q = options.quantize
        if q is not None and source.prequantized:
            raise UserError(f"{model} is already an int8 model; compile it without --quantize")
        if q is not None and backend.id not in QUANTIZING_BACKENDS:
            raise UserError(f"backend {backend.id} cannot build int8 models; use one of {', '.join(QUANTIZING_BACKENDS)}")
        if q is not None and backend.id in QDQ_BACKENDS:
            quantized = quantize_onnx(source, q, work / "quantize", progress)
            # The artifact must reproduce the int8 model that passed the gate, so that model
            # is the reference of the numerical validation below.
            source = reference = quantized.source
        elif q is not None:
            if q.auto:
                raise UserError(f"backend {backend.id} has no int8-auto mode; use --quantize int8")
            calibration, gate_data = load_data(source, q, progress)
            # The backend calibrates on the calibration part only; the held-out part judges it.
            np.savez(work / "calibration.npz", x=np.stack(calibration.inputs))
            backend_options_dict.update(quantize="int8", calibration=str(work / "calibration.npz"),
                                        calibration_samples=len(calibration))
        backend_options = backend.options_type.from_dict(backend_options_dict)
        root = work / "artifact"
        root.mkdir()
        lowered = backend.lower(source, profile, backend_options, root, progress)
        files = dict(lowered.files)
        if source.labels:
            (root / LABELS_FILE).write_text("\n".join(source.labels) + "\n", encoding="utf-8")
            files[LABELS_FILE] = "labels"
        manifest = _manifest(source, version, profile, backend.id, lowered, files, root,
                             validate.skipped("not run yet"), quantized)
        (root / "manifest.json").write_text(manifest.to_json())
        if gate_data is not None:
            assert q is not None
            details = dict(lowered.options.get("quantization") or {})
            gate_result = gate_artifact(
                source, q, gate_data, lambda _path, inputs: [o[0] for o in validate.run_artifact(root, [[x] for x in inputs])],
                int(details.get("calibration_samples", 0)) or q.calibration_samples,
                f"{backend.id} {details.get('scheme', 'int8')}", progress)
            method = f"{backend.id} {details.get('scheme', 'full-integer int8')}, {details.get('calibration_method', '')}"
            quantized = QuantizedModel(source=source, gate=gate_result,
                                       calibration_samples=int(details.get("calibration_samples", 0)),
                                       method=method.rstrip(", "), details=details)
            # The gate ran the artifact itself; there is no int8 ONNX model to compare it with.
            validation = Validation(status="passed", reference="int8 accuracy gate on the artifact",
                                    executed_on=f"host {compat.host_info().arch} (cpu)", samples=gate_result.samples,
                                    top1_agreement=gate_result.agreement, reason=None)
        else:
            validation = _validate(reference, profile, root, manifest, options, progress,
                                   quantized is not None or source.prequantized)
        elapsed = time.perf_counter() - started
        manifest = _manifest(source, version, profile, backend.id, lowered, files, root, validation, quantized,
                             extra={"compile_seconds": round(elapsed, 2), "graph": dict(source.stats)})
        with progress.step(f"write {output}"):
            pack(manifest, root, output)
        return CompiledArtifact(path=output, manifest=manifest, size=output.stat().st_size)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _validate(source: SourceModel, profile: DeviceProfile, root: Path, manifest: Manifest,
              options: CompileOptions, progress: Progress, int8: bool) -> Validation:
    if not options.validate:
        return validate.skipped("disabled with --no-validate")
    runner: Runner = LocalRunner()
    executed_on = f"host {compat.host_info().arch}"
    why_not = host_can_execute(profile)
    if why_not:
        board = _emulated_board(profile, manifest.backend)
        if isinstance(board, str):
            return validate.skipped(f"this machine cannot execute the target ({why_not}) and {board}")
        runner = board
        executed_on = f"emulated {profile.id} (qemu {profile.emulation.cpu})"  # type: ignore[union-attr]
    device = "cuda" if profile.is_cuda else "cpu"
    settings = options.validation
    where = " on the emulated board" if runner.kind == "emulated" else ""
    with progress.step(f"validate against ONNX Runtime ({settings.samples} samples{where})"):
        batches = validate.make_inputs(source, settings)
        reference = validate.reference_outputs(source, batches)
        if int8:
            # Engines may round an int8 value one step apart (another fusion or accumulation
            # order), which moves an output by about one quantization step of its range; the
            # accuracy gate already judged the int8 model itself.
            spread = max(float(np.ptp(out)) for batch in reference for out in batch)
            floor = validate.INT8_RELATIVE_TOLERANCE * spread
            if settings.tolerance_abs < floor:
                settings = replace(settings, tolerance_abs=round(floor, 6))
        candidate = validate.run_artifact(root, batches, device, runner)
        return validate.compare(reference, candidate, manifest.outputs, settings, executed_on=f"{executed_on} ({device})")


# Backends whose device runtime the emulated boards carry (numpy and apache-tvm-ffi).
_EMULATED_BACKENDS = ("tvm",)


def _emulated_board(profile: DeviceProfile, backend: str) -> EmulatedRunner | str:
    """The emulated board to validate on, or why there is none to use (only a board
    already built is used; see :func:`edgekiln.execute.runners.emulated_board_problem`)."""
    if profile.emulation is None:
        return "the profile has no emulated board"
    if backend not in _EMULATED_BACKENDS:
        return f"the emulated board carries no {backend} runtime"
    return emulated_board_problem(profile) or EmulatedRunner(profile)


def _manifest(source: SourceModel, version: str, profile: DeviceProfile, backend: str, lowered: Any,
              files: Mapping[str, str], root: Path, validation: Validation, quantized: QuantizedModel | None,
              extra: Mapping[str, Any] | None = None) -> Manifest:
    return Manifest(
        model=ModelInfo(
            name=source.name,
            version=version,
            source_format=source.source_format,
            source_sha256=source.source_sha256,
            params=source.stats.get("params"),
            macs=source.stats.get("macs"),
        ),
        profile=profile.id,
        backend=backend,
        backend_options={**lowered.options, "target": lowered.target},
        target_triple=profile.cpu.triple,
        edgekiln_version=__version__,
        compiler=dict(lowered.compiler),
        runtime=lowered.runtime,
        inputs=source.inputs,
        outputs=source.outputs,
        files=tuple(file_entry(root, path, role) for path, role in sorted(files.items())),
        validation=validation,
        preprocessing=source.preprocessing,
        labels=LABELS_FILE if LABELS_FILE in files else None,
        quantization=None if quantized is None else {
            "mode": "int8",
            "method": quantized.method,
            "calibration_samples": quantized.calibration_samples,
            "accuracy_gate": quantized.gate.to_dict(),
        },
        created_utc=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        extra=dict(extra or {}),
    )


def parse_input_shape(values: Sequence[str] | None) -> InputShapes:
    """``--input-shape`` values: ``1,3,224,224`` for a single input or ``NAME:1,3,224,224``."""
    if not values:
        return None
    named: dict[str, list[int]] = {}
    plain: list[int] | None = None
    for value in values:
        name, sep, dims = value.rpartition(":")
        try:
            shape = [int(d) for d in dims.replace("x", ",").split(",") if d.strip()]
        except ValueError:
            raise UserError(f"--input-shape {value!r} is not a list of integers such as 1,3,224,224") from None
        if not shape:
            raise UserError(f"--input-shape {value!r} gives no dimensions")
        if sep:
            named[name] = shape
        else:
            plain = shape
    if plain is not None and named:
        raise UserError("give --input-shape either once without a name or as NAME:DIMS for each input")
    return plain if plain is not None else named

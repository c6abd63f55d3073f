"""``compile_model``: model file → artifact for one device profile, as a pipeline.

import (``SourceModel``) → optimize/quantize (``QuantizedModel``, or calibration data for a
backend that quantizes by itself) → lower per backend (``LoweredFiles``) → validate
(``StagedArtifact``) → package (``CompiledArtifact``); the types are in stages.py.  Work
happens in a private temporary directory; the output path only ever receives a complete,
validated artifact.  ``--backend auto`` runs lower-and-validate once per candidate backend
over the one imported model (auto.py).
"""

from __future__ import annotations

import datetime as _dt
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from edgekiln import __version__
from edgekiln.artifact.manifest import BackendSelection, GraphStats, Manifest, ModelInfo, Validation
from edgekiln.artifact.package import file_entry, pack
from edgekiln.compile import auto, evidence, preprocessing, validate, validate_on
from edgekiln.compile.backends import registry
from edgekiln.compile.backends.base import Backend, BackendOptions
from edgekiln.compile.frontends import import_model
from edgekiln.compile.quantize import QuantizeOptions, gate_artifact, load_data, quantize_onnx
from edgekiln.compile.sequential import TimingBudget
from edgekiln.compile.stages import (
    CompiledArtifact,
    InputShapes,
    Int8Inputs,
    LoweredFiles,
    QuantizedModel,
    SourceModel,
    StagedArtifact,
)
from edgekiln.device_profiles import DeviceProfile, get_profile
from edgekiln.errors import BackendError, DependencyError, UserError
from edgekiln.execute.host import cannot_execute
from edgekiln.execute.progress import NullProgress, Progress
from edgekiln.runtime import compat

LABELS_FILE = "labels.txt"


@dataclass(frozen=True)
class CompileOptions:
    """Typed options of one compile; ``backend="auto"`` picks one (see compile/auto.py).

    ``backend_options`` holds typed options per backend (``TVMOptions(embed_ptx=False)``,
    ``LiteRTOptions(num_threads=2)``...): each backend takes the one of its own type, or its
    defaults.  A plain mapping is read through the option type of the named backend.
    """

    backend: str = auto.AUTO
    backend_options: BackendOptions | Sequence[BackendOptions] | Mapping[str, Any] = ()
    validation: validate.ValidationOptions = field(default_factory=validate.ValidationOptions)
    validate: bool = True
    # Where to validate (validate_on.CHOICES): auto, host, emulator or none; validate=False
    # is the same as "none".
    validate_on: str = validate_on.AUTO
    quantize: QuantizeOptions | None = None
    # Bundle libedgekiln + edgekiln-run (compile/native.py) and validate through them.
    native_runtime: bool = False
    # How --backend auto times candidates when this host can run the target.
    auto_timing: TimingBudget = field(default_factory=TimingBudget)
    # Image preprocessing (a preset name such as "imagenet-torch", a JSON object or a mapping)
    # and class names (a labels file, or the names): see compile/preprocessing.py.
    preprocessing: str | Mapping[str, Any] | None = None
    labels: str | os.PathLike[str] | Sequence[str] | None = None

    def __post_init__(self) -> None:
        if self.native_runtime and self.backend != "tvm":
            raise UserError(
                f"--native-runtime runs tvm artifacts only; the backend is {self.backend}", hint="add --backend tvm"
            )
        if self.validate_on not in validate_on.CHOICES:
            raise UserError(f"validate_on takes {', '.join(validate_on.CHOICES)}, not {self.validate_on!r}")
        if not self.validate and self.validate_on not in (validate_on.AUTO, "none"):
            raise UserError(f"--no-validate contradicts --validate-on {self.validate_on}", hint="give one of them")
        given = self.backend_options
        if isinstance(given, Mapping):
            if given and self.backend == auto.AUTO:
                raise UserError(
                    "backend options as a mapping need a named backend, not auto",
                    hint="give typed options such as TVMOptions(embed_ptx=False), one per backend",
                )
            given = (registry.get(self.backend).options_type.from_dict(given),) if given else ()
        elif isinstance(given, BackendOptions):
            given = (given,)
        typed = tuple(given)
        for item in typed:
            if not isinstance(item, BackendOptions):
                raise UserError(f"backend options must be a backend's option type, got {type(item).__name__}")
        kinds = [type(item) for item in typed]
        if len(set(kinds)) != len(kinds):
            raise UserError("backend options give the same backend's options twice")
        object.__setattr__(self, "backend_options", typed)

    def validation_site(self, profile: DeviceProfile) -> validate_on.ValidationSite:
        """Where this compile validates for ``profile`` (see compile/validate_on.py)."""
        requested = self.validate_on if self.validate else "none"
        return validate_on.choose(
            profile, requested, host_problem=host_can_execute(profile), native=self.native_runtime
        )

    def options_for(self, backend: Backend) -> BackendOptions:
        """This backend's options: the ones of its type given here, else its defaults."""
        typed: tuple[BackendOptions, ...] = self.backend_options  # type: ignore[assignment]
        return next((o for o in typed if isinstance(o, backend.options_type)), backend.options_type())


def tuning_coverage(
    source: SourceModel, profile: DeviceProfile, options: CompileOptions
) -> evidence.TuningCoverage | None:
    """How much of ``source``'s FLOPs TVM tuning records for ``profile`` cover, or None when
    there are none (or TVM is not installed): the input of auto's evidence rule (TVM only
    with >= 90% coverage). Records come from ``--tuning-db``, the cache, then the records
    shipped with edgekiln (:mod:`edgekiln.compile.backends.tvm.tuning`); nothing is built."""
    from edgekiln.compile.backends.tvm.backend import TVMOptions

    tvm_options = next((o for o in options.backend_options if isinstance(o, TVMOptions)), TVMOptions())
    if "tvm" not in profile.backends or not tvm_options.tuning_records or profile.is_cuda:
        return None  # CUDA builds apply no records (dlight schedules): nothing to cover
    try:
        from edgekiln.compile.backends.tvm import tuning

        found = tuning.records_coverage(source, profile, tuning_db=tvm_options.tuning_db)
    except (BackendError, DependencyError):
        return None  # TVM missing or unable to import the model: it cannot be chosen anyway
    if not found.tasks:
        return None
    return evidence.TuningCoverage(flops_share=found.share, source=",".join(found.sources))


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
    started = time.perf_counter()
    options = options or CompileOptions()
    progress = progress or NullProgress()
    output = _output_path(output)
    profile = get_profile(target)
    backends = _backends(profile, options)
    user_preprocessing, user_labels = preprocessing.given(options.preprocessing, options.labels)
    options.validation_site(profile)  # a --validate-on that cannot be honoured fails before any work
    # Nothing is written next to the output until the final rename in pack().
    with tempfile.TemporaryDirectory(prefix="edgekiln-compile-", ignore_cleanup_errors=True) as tmp:
        work = Path(tmp)
        source = import_source(
            model, work / "source", framework=framework, input_shape=input_shape, name=name, progress=progress
        )
        source = preprocessing.apply(source, user_preprocessing, user_labels)
        int8 = optimize(source, options.quantize, backends, work / "quantize", progress)

        def lower_one(source: SourceModel, backend: Backend) -> StagedArtifact:
            return lower_and_validate(source, int8, backend, profile, version, options, work / backend.id, progress)

        selection: BackendSelection | None = None
        if options.backend == auto.AUTO:
            staged, selection = auto.compile_auto(
                source,
                backends,
                lower_one,
                profile,
                work / "auto",
                host_can_execute(profile),
                progress,
                precision="int8" if options.quantize is not None or source.prequantized else "fp32",
                coverage=tuning_coverage(source, profile, options),
                budget=options.auto_timing,
            )
        else:
            staged = lower_one(source, backends[0])
        return package(staged, output, selection, time.perf_counter() - started, progress)


def _output_path(output: str | os.PathLike[str]) -> Path:
    output = Path(output)
    if output.is_dir():
        raise UserError(f"output path {output} is a directory", hint="give a file name such as model.tar.gz")
    if not output.parent.exists():
        raise UserError(
            f"the directory of the output path {output} does not exist",
            hint="create it first, or give another output path",
        )
    return output


def _backends(profile: DeviceProfile, options: CompileOptions) -> list[Backend]:
    """The backends to try, in order; every reason that rules out a named one fails here,
    before any work."""
    v = options.validation
    if v.tolerance_abs < 0 or v.tolerance_rel < 0 or v.samples < 1:
        raise UserError(
            "the validation tolerances must be >= 0 and the sample count >= 1",
            hint="e.g. --tolerance 1e-4 --rtol 1e-5 --validation-samples 3",
        )
    q = options.quantize
    if options.backend == auto.AUTO:
        candidates = auto.eligible(profile, q)
        if not candidates:
            raise UserError(
                f"profile {profile.id} has no backend that can build this model here "
                f"(it lists {', '.join(profile.backends)})"
            )
        return [registry.get(name) for name in candidates]
    backend = registry.get(options.backend)
    reason = backend.supports(profile)
    if reason:
        raise UserError(f"backend {backend.id} cannot build for {profile.id}: {reason}")
    foreign = [type(o).__name__ for o in options.backend_options if not isinstance(o, backend.options_type)]
    if foreign:
        raise UserError(
            f"{', '.join(foreign)} do not apply to the {backend.id} backend",
            hint=f"its options are {backend.options_type.__name__}",
        )
    if q is not None and not backend.can_quantize(q.auto):
        able = [n for n in registry.names() if registry.get(n).can_quantize(q.auto)]
        raise UserError(f"backend {backend.id} cannot build {q.mode} models; use one of {', '.join(able)}")
    return [backend]


def import_source(
    model: str | os.PathLike[str],
    workdir: Path,
    *,
    framework: str | None,
    input_shape: InputShapes,
    name: str | None,
    progress: Progress,
) -> SourceModel:
    """Stage 1: the model, of any framework, as a canonical ONNX ``SourceModel``."""
    with progress.step(f"import {model}"):
        return import_model(model, workdir, framework=framework, input_shape=input_shape, name=name)


def optimize(
    source: SourceModel,
    quantize: QuantizeOptions | None,
    backends: Sequence[Backend],
    workdir: Path,
    progress: Progress,
) -> Int8Inputs | None:
    """Stage 2: quantize once for every candidate that needs it (None: an fp32 compile)."""
    if quantize is None:
        return None
    if source.prequantized:
        raise UserError(f"{source.source_ref} is already an int8 model; compile it without --quantize")
    qdq = error = None
    if any(b.quantization == "qdq" for b in backends):
        try:
            qdq = quantize_onnx(source, quantize, workdir, progress)
        except (BackendError, DependencyError) as exc:
            if not any(b.needs_calibration() for b in backends):
                raise
            error = exc  # the backends that quantize by themselves still get their chance
    calibration = gate_data = None
    if any(b.needs_calibration() for b in backends):
        # The backend calibrates on the calibration part only; the held-out part judges it.
        calibration, gate_data = load_data(source, quantize, progress)
    return Int8Inputs(quantize, qdq, error, calibration, gate_data)


def lower_and_validate(
    source: SourceModel,
    int8: Int8Inputs | None,
    backend: Backend,
    profile: DeviceProfile,
    version: str,
    options: CompileOptions,
    root: Path,
    progress: Progress,
) -> StagedArtifact:
    """Stages 3 and 4 for one backend: lower into ``root``, write the manifest the runtime
    needs to load it, and validate it there."""
    model, quantized, calibration = source, None, None
    if int8 is not None and backend.quantization == "qdq":
        if int8.qdq is None:
            assert int8.qdq_error is not None
            raise int8.qdq_error
        # The artifact must reproduce the int8 model that passed the gate, so that model
        # is also the reference of the numerical validation below.
        model, quantized = int8.qdq.source, int8.qdq
    elif int8 is not None:
        calibration = int8.calibration
    root.mkdir(parents=True)
    lowered = backend.lower(model, profile, options.options_for(backend), root, progress, calibration=calibration)
    files = dict(lowered.files)
    extra: dict[str, Any] = {}
    if options.native_runtime:
        from edgekiln.compile import native

        bundled, extra["native_runtime"] = native.bundle(profile, root, progress)
        files.update(bundled)
    if source.labels:
        (root / LABELS_FILE).write_text("\n".join(source.labels) + "\n", encoding="utf-8")
        files[LABELS_FILE] = "labels"
    manifest = replace(_manifest(model, version, profile, backend.id, lowered, files, root), extra=extra)
    (root / "manifest.json").write_text(manifest.to_json())
    if calibration is not None:
        assert int8 is not None and int8.gate_data is not None
        quantized, validation = _gate_self_quantized(model, int8, backend, lowered, root, progress)
    else:
        validation = _validate(
            model, profile, root, manifest, options, progress, quantized is not None or source.prequantized
        )
    manifest = replace(
        manifest, validation=validation, quantization=None if quantized is None else quantized.manifest_entry()
    )
    return StagedArtifact(backend=backend.id, root=root, manifest=manifest)


def _gate_self_quantized(
    source: SourceModel, int8: Int8Inputs, backend: Backend, lowered: LoweredFiles, root: Path, progress: Progress
) -> tuple[QuantizedModel, Validation]:
    """The accuracy gate on the int8 artifact a backend made by itself; it stands in for
    the numerical validation, as there is no int8 ONNX model to compare it with."""
    assert int8.gate_data is not None
    details = dict(lowered.options.get("quantization") or {})
    samples = int(details.get("calibration_samples", 0))
    gate = gate_artifact(
        source,
        int8.options,
        int8.gate_data,
        lambda _path, inputs: [o[0] for o in validate.run_artifact(root, [[x] for x in inputs])],
        samples or int8.options.calibration_samples,
        f"{backend.id} {details.get('scheme', 'int8')}",
        progress,
    )
    method = f"{backend.id} {details.get('scheme', 'full-integer int8')}, {details.get('calibration_method', '')}"
    quantized = QuantizedModel(
        source=source, gate=gate, calibration_samples=samples, method=method.rstrip(", "), details=details
    )
    validation = Validation(
        status="passed",
        reference="int8 accuracy gate on the artifact",
        executed_on=f"host {compat.host_info().arch} (cpu)",
        samples=gate.samples,
        top1_agreement=gate.agreement,
        reason=None,
    )
    return quantized, validation


def package(
    staged: StagedArtifact, output: Path, selection: BackendSelection | None, seconds: float, progress: Progress
) -> CompiledArtifact:
    """Stage 5: the validated build, with how it was chosen and how long it took, packed to ``output``."""
    manifest = replace(staged.manifest, backend_selection=selection, compile_seconds=round(seconds, 2))
    with progress.step(f"write {output}"):
        pack(manifest, staged.root, output)
    return CompiledArtifact(path=output, manifest=manifest, size=output.stat().st_size)


def _validate(
    source: SourceModel,
    profile: DeviceProfile,
    root: Path,
    manifest: Manifest,
    options: CompileOptions,
    progress: Progress,
    int8: bool,
) -> Validation:
    if not options.validate:
        return validate.skipped("disabled with --no-validate")
    site = options.validation_site(profile)
    if site.where == "none":
        return validate.skipped(site.why)
    executed_on = f"host {compat.host_info().arch}"
    if site.where == "emulator":
        problem = site.board_problem(
            profile, manifest.runtime.python_packages, native=options.native_runtime, progress=progress
        )
        if problem:
            why_not = host_can_execute(profile)
            return validate.skipped(f"this machine cannot execute the target ({why_not}) and {problem}")
        executed_on = f"emulated {profile.id} (qemu {profile.emulation.cpu})"  # type: ignore[union-attr]
    runner = site.runner(profile, progress)
    if options.native_runtime:
        executed_on += ", native runtime"
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
            settings = validate.range_tolerance(settings, reference, validate.INT8_RELATIVE_TOLERANCE)
        elif manifest.backend_options.get("precision") == "fp16":
            settings = validate.range_tolerance(settings, reference, validate.FP16_RELATIVE_TOLERANCE)
        if options.native_runtime:
            from edgekiln.execute.native import run_native

            candidate = run_native(root, batches, profile if runner.kind == "emulated" else None)
        else:
            candidate = validate.run_artifact(root, batches, device, runner)
        validation = validate.compare(
            reference, candidate, manifest.outputs, settings, executed_on=f"{executed_on} ({device})"
        )
        for variant in manifest.variant_libraries():  # each build the artifact carries
            validation = _validate_variant(
                root, variant.path, batches, reference, manifest, settings, runner, validation
            )
        if manifest.backend == "onnxruntime":
            # ONNX Runtime checked against itself proves little: a second, independent engine.
            from edgekiln.compile import second_reference

            second = second_reference.check(
                source, batches, candidate, manifest.outputs, settings.tolerance_abs, settings.tolerance_rel
            )
            validation = replace(validation, second_reference=second.reference, second_max_abs_diff=second.max_abs_diff)
    return validation


def _validate_variant(
    root: Path,
    library: str,
    batches: Any,
    reference: Any,
    manifest: Manifest,
    settings: validate.ValidationOptions,
    runner: Any,
    portable: Validation,
) -> Validation:
    """``portable``'s validation extended to the model library built for a richer CPU: the
    same inputs and tolerances, the larger of the differences; a failure names the library."""
    candidate = validate.run_artifact(root, batches, "cpu", runner, library=library)
    try:
        checked = validate.compare(reference, candidate, manifest.outputs, settings, executed_on="")
    except BackendError as exc:
        raise BackendError(f"{library}: {exc.message}", hint=exc.hint) from None
    worst = max(portable.max_abs_diff or 0.0, checked.max_abs_diff or 0.0)
    worst_rel = max(portable.max_rel_diff or 0.0, checked.max_rel_diff or 0.0)
    return replace(
        portable,
        executed_on=f"{portable.executed_on}; also {library}",
        max_abs_diff=worst,
        max_rel_diff=worst_rel,
        top1_agreement=min(portable.top1_agreement or 0.0, checked.top1_agreement or 0.0),
    )


def _manifest(
    source: SourceModel,
    version: str,
    profile: DeviceProfile,
    backend: str,
    lowered: LoweredFiles,
    files: Mapping[str, str],
    root: Path,
) -> Manifest:
    """The manifest of a lowered build; validation fills in ``validation`` and ``quantization``."""
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
        files=tuple(
            file_entry(root, path, role, tuple(lowered.cpu_features.get(path, ())))
            for path, role in sorted(files.items())
        ),
        validation=validate.skipped("not run yet"),
        preprocessing=source.preprocessing,
        labels=LABELS_FILE if LABELS_FILE in files else None,
        created_utc=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        graph=GraphStats(**source.stats) if source.stats else None,
        scores=preprocessing.output_scores(source.load_onnx()),
        tuning=lowered.tuning,
    )

"""The TVM backend: Relax lowering for the profile's CPU or GPU, cross-linking with the
profile's toolchain, and the TVM runtime library for the device's platform."""

from __future__ import annotations

import functools
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from edgekiln.artifact.manifest import RuntimeRequirements
from edgekiln.compile.backends.base import Backend, BackendOptions
from edgekiln.compile.backends.registry import register
from edgekiln.compile.backends.tvm import importer, runtime_libs
from edgekiln.compile.backends.tvm.variants import InBackground, Variants, variant_profiles
from edgekiln.compile.stages import LoweredFiles, SourceModel
from edgekiln.compile.toolchain import find_tools
from edgekiln.device_profiles import DeviceProfile
from edgekiln.errors import BackendError, DependencyError, UserError, first_line
from edgekiln.execute.host import host_info
from edgekiln.execute.progress import Progress

MODEL_LIBRARY = "lib/model.so"
RUNTIME_LIBRARY = "lib/libtvm_runtime.so"
RUNTIME_LIBRARY_CUDA = "lib/libtvm_runtime_cuda.so"

# CPU features that code generated for an LLVM cpu name uses, as /proc/cpuinfo spells
# them; the runtime refuses to load on a CPU that lacks one instead of dying on SIGILL.
_AVX2 = ("avx2", "fma", "f16c", "bmi2", "movbe")
_AVX512 = ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl")
_MCPU_FEATURES = {"haswell": _AVX2, "skylake-avx512": _AVX2 + _AVX512, "cascadelake": _AVX2 + _AVX512}
# LLVM -mattr names → /proc/cpuinfo names where they differ (32-bit ARM spells vfp4 "vfpv4").
_MATTR_FLAGS = {"vfp4": "vfpv4", "avx512f": "avx512f", "neon": "neon"}


@dataclass(frozen=True)
class TVMOptions(BackendOptions):
    """Options of the TVM backend.

    embed_ptx: for CUDA profiles, also embed PTX beside the SASS so that GPUs newer than
    the profile's architecture can still load the kernels (the driver JIT-compiles them).
    strip: drop debug information from the model library (it is 30–60 % of its size).
    tuning_db: a MetaSchedule database directory (``edgekiln tune --tuning-db``) whose records
    come before the cache's and the shipped ones (CPU profiles).
    tuning_records: apply tuning records at all (false: MetaSchedule-free default schedules).
    precision: "fp16" (CUDA profiles) computes in fp16 with fp32 accumulation; the
    artifact's inputs and outputs stay fp32 (see gpu_pipeline.py).
    cuda_graph: for CUDA profiles, capture the model's kernels in one CUDA graph.
    cpu_variants: also build the model for the profile's ``cpu.variants`` (richer CPUs of
    its class, such as AVX-512 for x86_64) that tuning records cover and this host can run;
    the runtime loads the one the device's CPU executes (see variants.py). Needs
    tuning_records.
    """

    backend: ClassVar[str] = "tvm"
    embed_ptx: bool = True
    strip: bool = True
    tuning_db: str | None = None
    tuning_records: bool = True
    precision: str = "fp32"
    cuda_graph: bool = True
    cpu_variants: bool = True

    def check(self) -> None:
        from edgekiln.compile.backends.tvm.gpu_pipeline import PRECISIONS

        if self.precision not in PRECISIONS:
            raise UserError(
                f"tvm backend option precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )


def required_cpu_features(profile: DeviceProfile) -> tuple[str, ...]:
    if profile.cpu.arch == "aarch64":
        return ()  # NEON/ASIMD is part of the AArch64 base ISA
    features = list(_MCPU_FEATURES.get(profile.cpu.mcpu, ()))
    for attr in profile.cpu.mattr:
        if attr.startswith("+"):
            name = _MATTR_FLAGS.get(attr[1:], attr[1:])
            if name not in features:
                features.append(name)
    return tuple(features)


@register
class TVMBackend(Backend):
    """Apache TVM Relax: CPU code through LLVM, CUDA kernels through nvcc."""

    id = "tvm"
    options_type = TVMOptions
    quantization = "qdq"
    runs_on_emulated_board = True  # the boards carry numpy and apache-tvm-ffi

    def supports(self, profile: DeviceProfile) -> str | None:
        if "tvm" not in profile.backends:
            return f"profile {profile.id} does not list the tvm backend (it lists {', '.join(profile.backends)})"
        return None

    def lower(
        self,
        model: SourceModel,
        profile: DeviceProfile,
        options: TVMOptions,
        root: Path,
        progress: Progress,
        calibration: Any = None,
    ) -> LoweredFiles:
        if options.tuning_db and profile.is_cuda:
            raise UserError(f"--tuning-db applies to CPU profiles; {profile.id} is a CUDA profile")
        if options.precision != "fp32" and not profile.is_cuda:
            raise UserError(
                f"precision {options.precision} is for CUDA profiles; {profile.id} has no CUDA GPU",
                hint="drop precision=fp16, or quantize to int8 with --quantize for a CPU",
            )
        # A variant is built only with tuning records (see variants.py): none without them.
        with_variants = (
            options.cpu_variants and options.tuning_records and bool(profile.cpu.variants) and not profile.is_cuda
        )
        if with_variants:
            variant_profiles(profile, required_cpu_features)  # a mistake in the profile fails first
        tvm, from_onnx = _import_tvm()
        fcompile = self._linker(profile, options)
        libs = runtime_libs.find(profile.cpu.arch)
        if profile.is_cuda and (libs is None or libs.cuda is None):
            raise DependencyError(
                f"apache-tvm {runtime_libs.tvm_version()} has no CUDA runtime library for {profile.cpu.arch}"
            )
        mod = importer.to_relax(model, from_onnx, progress)
        if not profile.is_cuda:
            mod = importer.for_cpu_inference(tvm, mod)
        target_dict = profile.tvm_target()
        library = root / MODEL_LIBRARY
        library.parent.mkdir(parents=True, exist_ok=True)
        compiler = {"tvm": runtime_libs.tvm_version()}
        tuned: dict[str, Any] = {}
        export = functools.partial(_export, fcompile=fcompile)
        variants = (
            InBackground(tvm, mod, profile, required_cpu_features, options.tuning_db, export, root)
            if with_variants
            else None
        )
        try:
            target, executable = self._build_for_profile(
                tvm, mod, target_dict, profile, options, compiler, progress, tuned
            )
            with progress.step(
                "link the model library" + (f" with {profile.toolchain.cc}" if profile.toolchain.cc else "")
            ):
                export(executable, library)
            files, notes = _copy_runtime_libraries(profile, libs, root)
            built = variants.result(progress) if variants is not None else Variants()
        finally:  # a failed build or Ctrl-C leaves no variant build running
            if variants is not None:
                variants.cancel()
        if variants is not None:
            tuned["variants"] = built.entries
            files.update(built.files)
        return LoweredFiles(
            files=files,
            runtime=_runtime_requirements(profile, libs, notes),
            compiler=compiler,
            target=json.loads(str(target)),
            options=asdict(options),
            tuning=tuned or None,
            cpu_features=built.cpu_features,
        )

    def _build_for_profile(
        self,
        tvm: Any,
        mod: Any,
        target_dict: Any,
        profile: DeviceProfile,
        options: TVMOptions,
        compiler: dict[str, str],
        progress: Progress,
        tuned: dict[str, Any],
    ) -> tuple[Any, Any]:
        """Build ``mod`` for the profile's CPU or GPU; returns the target and the executable.

        For CUDA profiles, also records nvcc's version in ``compiler``; for CPU profiles,
        the tuning records applied go into ``tuned`` (the manifest's ``tuning``)."""
        where = f"CUDA {profile.accelerator.cuda_arch}" if profile.is_cuda else profile.cpu.mcpu
        with progress.step(f"build for {profile.id} ({where})"):
            target = tvm.target.Target(target_dict)
            if profile.is_cuda:
                from edgekiln.compile.backends.tvm import cuda

                assert profile.accelerator is not None
                # The build host's own CUDA module makes TVM emit device code (see cuda.py).
                host_libs = runtime_libs.find(host_info().arch)
                assert host_libs is not None and host_libs.cuda is not None
                with cuda.ahead_of_time(profile.accelerator.cuda_arch, host_libs.cuda, options.embed_ptx) as fatbins:
                    executable = self._build_cuda(mod, target, options)
                if not fatbins:
                    raise BackendError(f"TVM produced no CUDA device code for {profile.accelerator.cuda_arch}")
                compiler["nvcc"] = cuda.nvcc_version()
            else:
                executable = self._build_cpu(tvm, mod, target, profile, options, progress, tuned)
        return target, executable

    def _build_cpu(
        self,
        tvm: Any,
        mod: Any,
        target: Any,
        profile: DeviceProfile,
        options: TVMOptions,
        progress: Progress,
        tuned: dict[str, Any],
    ) -> Any:
        if not options.tuning_records:
            return self._build(tvm, mod, target)
        from edgekiln.compile.backends.tvm import tuning
        from edgekiln.compile.backends.tvm.shipped_check import build_with_records

        applied = tuning.records_for_build(tvm, mod, target, profile, options.tuning_db, progress)
        if applied is None or applied.database is None:
            return self._build(tvm, mod, target)
        try:
            executable, applied = build_with_records(tvm, mod, target, applied)
        except Exception as exc:
            raise BackendError(
                f"TVM failed to build the model with tuning records: {first_line(exc, last=True)}"
            ) from None
        tuned.update(applied.manifest_entry())
        return executable if executable is not None else self._build(tvm, mod, target)

    @staticmethod
    def _build(tvm: Any, mod: Any, target: Any) -> Any:
        return importer.build(tvm, mod, target)

    def _build_cuda(self, mod: Any, target: Any, options: TVMOptions) -> Any:
        from edgekiln.compile.backends.tvm import gpu_pipeline

        try:
            return gpu_pipeline.build(
                mod,
                target,
                precision=options.precision,
                cuda_graph=options.cuda_graph,
                database=self._tuning_database(mod, target),
            )
        except Exception as exc:
            raise BackendError(f"TVM failed to build the model for CUDA: {first_line(exc, last=True)}") from None

    def _tuning_database(self, mod: Any, target: Any) -> Any:
        """The MetaSchedule database whose records the CUDA build applies (None: dlight's
        default schedules for every kernel). None until `edgekiln tune` tunes CUDA targets:
        it refuses them today, and --tuning-db is refused for CUDA profiles above."""
        return None

    @staticmethod
    def _linker(profile: DeviceProfile, options: TVMOptions) -> Any:
        from tvm.support import cc as tvm_cc

        (compiler,) = find_tools(profile)
        flags = ["-s"] if options.strip else []
        if profile.toolchain.cc is None and not flags:
            return None  # TVM's own default: the host's g++
        return tvm_cc.cross_compiler(compiler, options=flags)


def _export(executable: Any, path: Path, fcompile: Any) -> None:
    try:
        executable.export_library(str(path), fcompile=fcompile)
    except Exception as exc:
        raise BackendError(f"linking the model library failed: {first_line(exc, last=True)}") from None


def _import_tvm() -> tuple[Any, Any]:
    """The tvm module and its ONNX frontend, or a DependencyError that says what to install."""
    try:
        import tvm
        from tvm.relax.frontend.onnx import from_onnx
    except ImportError as exc:
        raise DependencyError(
            f"the TVM compiler is not installed ({exc})", hint="pip install 'edgekiln[compile]'"
        ) from None
    return tvm, from_onnx


def _copy_runtime_libraries(
    profile: DeviceProfile, libs: runtime_libs.RuntimeLibs | None, root: Path
) -> tuple[dict[str, str], list[str]]:
    """Copy the TVM runtime libraries beside the model library; returns the files and notes."""
    files = {MODEL_LIBRARY: "model-library"}
    notes: list[str] = []
    if libs is not None:
        shutil.copyfile(libs.runtime, root / RUNTIME_LIBRARY)
        files[RUNTIME_LIBRARY] = "runtime-library"
        if profile.is_cuda and libs.cuda is not None:
            shutil.copyfile(libs.cuda, root / RUNTIME_LIBRARY_CUDA)
            files[RUNTIME_LIBRARY_CUDA] = "runtime-library-cuda"
    else:
        notes.append(runtime_libs.unavailable_reason(profile.cpu.arch) or "")
    return files, notes


def _runtime_requirements(
    profile: DeviceProfile, libs: runtime_libs.RuntimeLibs | None, notes: list[str]
) -> RuntimeRequirements:
    return RuntimeRequirements(
        arch=profile.cpu.arch,
        glibc=libs.glibc if libs else None,
        python_packages=(f"apache-tvm-ffi=={_ffi_version()}", "numpy"),
        library="libtvm_runtime.so",
        library_version=runtime_libs.tvm_version(),
        cuda_arch=profile.accelerator.cuda_arch if profile.is_cuda else None,
        # libtvm_runtime_cuda.so links libcudart.so.<major> of the toolkit it was built with.
        cuda_runtime=f"libcudart.so.{_cudart_major(libs.cuda)}" if profile.is_cuda and libs and libs.cuda else None,
        cpu_features=required_cpu_features(profile),
        notes=tuple(n for n in notes if n),
    )


def _ffi_version() -> str:
    from importlib import metadata

    return metadata.version("apache-tvm-ffi")


def _cudart_major(library: Path) -> str:
    data = library.read_bytes()
    marker = data.find(b"libcudart.so.")
    if marker < 0:
        return "?"
    end = marker + len(b"libcudart.so.")
    digits = b""
    while end < len(data) and data[end : end + 1].isdigit():
        digits += data[end : end + 1]
        end += 1
    return digits.decode() or "?"

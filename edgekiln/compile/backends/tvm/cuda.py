"""Ahead-of-time CUDA compilation for TVM artifacts.

TVM 0.27's CUDA code generator keeps kernels as CUDA source in the exported library unless
the CUDA runtime module is available while it builds, and a library holding source needs
NVRTC or nvcc on the device at load time.  edgekiln wants device code in the artifact, so
while building for a CUDA profile it:

* makes TVM's CUDA runtime module available on the build host, which needs no GPU: the
  host may lack the driver library ``libcuda.so.1``, so a stub with the driver entry points
  that the module imports (each returning CUDA_ERROR_NO_DEVICE) is built with the host C
  compiler and loaded first — like the stubs the CUDA toolkit ships for linking;
* registers ``tvm_callback_cuda_compile`` to compile each kernel source with nvcc into a
  fatbin for the profile's architecture (SASS, plus PTX so newer GPUs can JIT it).

The exported library then holds the fatbin; the device's driver loads it directly.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Iterator

from edgekiln.errors import BackendError, DependencyError

_lock = threading.Lock()
_stub_handles: list[ctypes.CDLL] = []
# Driver API functions libtvm_runtime_cuda.so imports (nm -D --undefined-only); the stub
# defines them all so that the library loads without a driver.
_DRIVER_SYMBOLS = (
    "cuDeviceGetName",
    "cuFuncSetAttribute",
    "cuGetErrorName",
    "cuGetErrorString",
    "cuLaunchKernelEx",
    "cuModuleGetFunction",
    "cuModuleLoadData",
    "cuModuleUnload",
    "cuTensorMapEncodeTiled",
)
_CUDA_ERROR_NO_DEVICE = 100


def nvcc_path() -> str:
    found = os.environ.get("EDGEKILN_NVCC") or shutil.which("nvcc")
    if not found:
        for candidate in ("/usr/local/cuda/bin/nvcc",):
            if os.access(candidate, os.X_OK):
                return candidate
        raise DependencyError(
            "nvcc is not installed; CUDA profiles need it to compile kernels ahead of time",
            hint="install the CUDA toolkit (Debian: nvidia-cuda-toolkit) or set EDGEKILN_NVCC",
        )
    return found


def nvcc_version() -> str:
    out = subprocess.run([nvcc_path(), "--version"], capture_output=True, text=True).stdout
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else "unknown"


def check_arch(cuda_arch: str) -> None:
    """Raise DependencyError when this nvcc cannot generate code for ``cuda_arch``."""
    out = subprocess.run([nvcc_path(), "--list-gpu-code"], capture_output=True, text=True)
    supported = set(out.stdout.split())
    if out.returncode == 0 and supported and cuda_arch not in supported:
        listed = ", ".join(sorted(supported, key=lambda a: int(re.sub(r"\D", "", a) or 0)))
        raise DependencyError(
            f"nvcc {nvcc_version()} cannot generate code for {cuda_arch} (it supports {listed})",
            hint="install a CUDA toolkit that still supports this GPU and set EDGEKILN_NVCC to its nvcc",
        )


def _ensure_cuda_module(runtime_cuda_lib: Path) -> None:
    import tvm_ffi

    if tvm_ffi.get_global_func("ffi.Module.create.cuda", allow_missing=True) is not None:
        return
    try:
        ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
    except OSError:
        _stub_handles.append(_load_driver_stub())
    try:
        _stub_handles.append(ctypes.CDLL(str(runtime_cuda_lib), mode=ctypes.RTLD_GLOBAL))
    except OSError as exc:
        raise DependencyError(f"cannot load TVM's CUDA runtime module on this build host: {exc}") from None


def _load_driver_stub() -> ctypes.CDLL:
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise DependencyError("a C compiler (cc) is needed to build for CUDA profiles", hint="apt-get install gcc")
    workdir = Path(tempfile.mkdtemp(prefix="edgekiln-cudastub-"))
    source = workdir / "stub.c"
    source.write_text("".join(f"int {name}(void) {{ return {_CUDA_ERROR_NO_DEVICE}; }}\n" for name in _DRIVER_SYMBOLS))
    library = workdir / "libcuda.so.1"
    proc = subprocess.run(
        [cc, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(library), str(source)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise DependencyError(f"cannot build the CUDA driver stub: {proc.stderr.strip()[:200]}")
    # Loaded by path; the soname makes later NEEDED lookups of libcuda.so.1 resolve to it.
    handle = ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    shutil.rmtree(workdir, ignore_errors=True)
    return handle


def compile_kernels(code: str, cuda_arch: str, embed_ptx: bool = True) -> bytes:
    """Compile one CUDA translation unit into a fatbin for ``cuda_arch``."""
    number = cuda_arch.removeprefix("sm_")
    codes = f"sm_{number},compute_{number}" if embed_ptx else f"sm_{number}"
    with tempfile.TemporaryDirectory(prefix="edgekiln-nvcc-") as tmp:
        src, out = Path(tmp) / "kernels.cu", Path(tmp) / "kernels.fatbin"
        src.write_text(code)
        cmd = [
            nvcc_path(),
            "--fatbin",
            "-O3",
            "-w",
            f"--generate-code=arch=compute_{number},code=[{codes}]",
            "-o",
            str(out),
            str(src),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = " ".join(proc.stderr.strip().splitlines()[-3:])
            raise BackendError(f"nvcc failed to compile the kernels for {cuda_arch}: {tail}")
        return out.read_bytes()


@contextlib.contextmanager
def ahead_of_time(cuda_arch: str, runtime_cuda_lib: Path, embed_ptx: bool = True) -> Iterator[list[int]]:
    """While active, TVM CUDA builds produce fatbins for ``cuda_arch``.

    Yields a list that collects the size of each fatbin produced, so the caller can check
    that device code was in fact generated.
    """
    import tvm_ffi

    check_arch(cuda_arch)
    produced: list[int] = []
    with _lock:
        _ensure_cuda_module(runtime_cuda_lib)
        previous = tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True)

        def _compile(code: str, *unused: object) -> bytearray:
            binary = compile_kernels(code, cuda_arch, embed_ptx)
            produced.append(len(binary))
            return bytearray(binary)

        tvm_ffi.register_global_func("tvm_callback_cuda_compile", _compile, override=True)
        try:
            yield produced
        finally:
            if previous is not None:
                tvm_ffi.register_global_func("tvm_callback_cuda_compile", previous, override=True)

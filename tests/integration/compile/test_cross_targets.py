"""ARM artifacts hold libraries for the board's machine; CUDA artifacts hold device code
compiled ahead of time on this GPU-less machine."""

from __future__ import annotations

import tarfile

import pytest

from edgekiln.artifact import unpack
from edgekiln.artifact.binaries import cuda_images, elf_machine
from edgekiln.errors import DependencyError
from tests.conftest import nvcc_available


def _extract(artifact, tmp_path):
    root = tmp_path / "x"
    return unpack(artifact.path, root), root


def test_rasp4b_artifact_is_aarch64(compiled, tmp_path):
    manifest, root = _extract(compiled("zoo:mobilenet_v2", "rasp4b"), tmp_path)
    assert manifest.profile == "raspberry-pi/4b-aarch64"
    assert manifest.target_triple == "aarch64-linux-gnu"
    assert elf_machine(root / "lib/model.so") == "aarch64"
    assert elf_machine(root / "lib/libtvm_runtime.so") == "aarch64"
    assert manifest.runtime.arch == "aarch64" and manifest.runtime.glibc == "2.28"
    assert manifest.backend_options["target"]["mcpu"] == "cortex-a72"
    # Validated on the emulated board when one is built (tests/integration/emulation builds
    # it), otherwise skipped with the reason.
    if manifest.validation.status == "passed":
        assert manifest.validation.executed_on.startswith("emulated raspberry-pi/4b-aarch64")
        assert manifest.validation.max_abs_diff <= 1e-4 and manifest.validation.top1_agreement == 1.0
    else:
        assert manifest.validation.status == "skipped" and "aarch64" in manifest.validation.reason


def test_rasp3b_artifact_is_32bit_arm_hard_float(compiled, tmp_path):
    manifest, root = _extract(compiled("zoo:resnet18", "rasp3b"), tmp_path)
    assert manifest.target_triple == "arm-linux-gnueabihf"
    assert elf_machine(root / "lib/model.so") == "arm"
    data = (root / "lib/model.so").read_bytes()
    # e_flags of an ARM EABI5 hard-float object: EF_ARM_ABI_FLOAT_HARD (0x400).
    assert int.from_bytes(data[36:40], "little") & 0x400
    # apache-tvm has no armv7l release: the artifact says so instead of shipping a wrong library.
    assert manifest.file("runtime-library") is None
    assert any("armv7l" in note for note in manifest.runtime.notes)


needs_nvcc = pytest.mark.skipif(not nvcc_available(), reason="nvcc (CUDA toolkit) is not installed")


@needs_nvcc
@pytest.mark.parametrize(("profile", "arch"), [("h200", "sm_90"), ("ml_g4dn", "sm_75")])
def test_cuda_artifact_holds_sass_for_the_profile(compiled, tmp_path, profile, arch):
    manifest, root = _extract(compiled("zoo:mobilenet_v3_small", profile), tmp_path)
    images = cuda_images(root / "lib/model.so")
    assert [i.arch for i in images if i.kind == "sass"] == [arch]
    assert any(i.kind == "ptx" for i in images)
    assert all(i.size > 1000 for i in images)
    assert manifest.runtime.cuda_arch == arch
    assert manifest.runtime.cuda_runtime.startswith("libcudart.so.")
    assert manifest.file("runtime-library-cuda") is not None
    # No kernel source travels: the device needs neither nvcc nor NVRTC.
    assert b"__global__" not in (root / "lib/model.so").read_bytes()
    assert "nvcc" in manifest.compiler


@needs_nvcc
def test_cuda_without_ptx(compiled, tmp_path):
    from edgekiln.compile.api import CompileOptions

    artifact = compiled(
        "zoo:mobilenet_v3_small", "h100", options=CompileOptions(backend="tvm", backend_options={"embed_ptx": False})
    )
    _, root = _extract(artifact, tmp_path)
    assert [(i.kind, i.arch) for i in cuda_images(root / "lib/model.so")] == [("sass", "sm_90")]


@needs_nvcc
def test_gpu_this_nvcc_cannot_target_is_a_clear_error(tmp_path):
    import subprocess

    from edgekiln.compile.api import CompileOptions, compile_model

    codes = subprocess.run(["nvcc", "--list-gpu-code"], capture_output=True, text=True).stdout.split()
    if "sm_53" in codes:
        pytest.skip("this nvcc still supports sm_53")
    with pytest.raises(DependencyError, match="sm_53"):
        compile_model(
            "zoo:mobilenet_v3_small", "jetson_nano", tmp_path / "nano.tar.gz", options=CompileOptions(backend="tvm")
        )
    assert not (tmp_path / "nano.tar.gz").exists()


def test_archive_members_are_plain_files(compiled):
    with tarfile.open(compiled("zoo:mobilenet_v2", "rasp4b").path) as tar:
        members = tar.getmembers()
    assert all(m.isreg() for m in members)
    assert members[0].name == "manifest.json"

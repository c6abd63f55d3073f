"""Compatibility checks name what the artifact needs and what the device has."""

from __future__ import annotations

import dataclasses

import pytest

from edgekiln.artifact import Manifest, ModelInfo, RuntimeRequirements, TensorSpec, Validation
from edgekiln.errors import CompatibilityError, UserError
from edgekiln.runtime import compat

HOST = compat.HostInfo(arch="x86_64", os="linux", glibc="2.36", cpu_features=frozenset({"avx2", "fma"}))


def _manifest(**runtime) -> Manifest:
    return Manifest(
        model=ModelInfo("m", "1", "onnx", "0" * 64),
        profile="p",
        backend="tvm",
        backend_options={},
        target_triple="t",
        edgekiln_version="0",
        compiler={},
        runtime=RuntimeRequirements(**{"arch": "x86_64", **runtime}),
        inputs=(TensorSpec("input", "float32", (1,)),),
        outputs=(TensorSpec("out", "float32", (1,)),),
        files=(),
        validation=Validation(status="skipped"),
    )


def test_matching_artifact_has_no_problems():
    assert compat.problems(_manifest(glibc="2.28", cpu_features=("avx2",)), "cpu", HOST) == []


@pytest.mark.parametrize(
    ("runtime", "device", "expected"),
    [
        ({"arch": "aarch64"}, "cpu", "needs a aarch64 CPU; this device is x86_64"),
        ({"glibc": "2.39"}, "cpu", "glibc >= 2.39; this device has 2.36"),
        ({"cpu_features": ("avx512f",)}, "cpu", "avx512f"),
        ({"cuda_arch": "sm_90"}, "cpu", "device='cuda'"),
        ({}, "cuda", "device='cpu'"),
    ],
)
def test_each_mismatch_is_named(runtime, device, expected):
    found = compat.problems(_manifest(**runtime), device, HOST)
    assert len(found) == 1 and expected in found[0]


def test_check_raises_compatibility_error_for_this_host(monkeypatch):
    other = "aarch64" if compat.host_info().arch != "aarch64" else "x86_64"
    with pytest.raises(CompatibilityError, match=f"needs a {other} CPU"):
        compat.check(_manifest(arch=other), "cpu")
    with pytest.raises(UserError, match="unknown device"):
        compat.check(_manifest(), "tpu")


def test_host_info_reads_this_machine():
    info = compat.host_info()
    assert info.arch in ("x86_64", "aarch64", "armv7l")
    assert info.os == "linux"
    assert dataclasses.is_dataclass(info)


H100 = compat.CudaInfo(driver_version=13000, compute_capability=(9, 0), name="H100")


@pytest.mark.parametrize(
    ("gpu", "runtime", "ptx", "expected"),
    [
        (H100, {"cuda_arch": "sm_90", "cuda_runtime": "libcudart.so.13"}, True, None),
        (None, {"cuda_arch": "sm_90"}, True, "has none"),
        (compat.CudaInfo(13000, (7, 5), "T4"), {"cuda_arch": "sm_90"}, True, "is sm_75"),
        # Newer GPU: SASS alone does not run, PTX does.
        (compat.CudaInfo(13000, (10, 0), "B200"), {"cuda_arch": "sm_90"}, False, "is sm_100"),
        (compat.CudaInfo(13000, (10, 0), "B200"), {"cuda_arch": "sm_90"}, True, None),
        (
            compat.CudaInfo(12040, (9, 0), "H100"),
            {"cuda_arch": "sm_90", "cuda_runtime": "libcudart.so.13"},
            True,
            "driver for CUDA 13",
        ),
    ],
)
def test_gpu_artifact_checks(gpu, runtime, ptx, expected):
    manifest = dataclasses.replace(_manifest(**runtime), backend_options={"embed_ptx": ptx})
    found = compat.problems(manifest, "cuda", HOST, gpu)
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and expected in found[0], found


@pytest.mark.parametrize(
    "text,expected",
    [
        ("1.32.0", (1, 32, 0)),
        ("2026.4.1-22982-e213a147257-releases/2026/4", (2026, 4, 1)),  # openvino.__version__
        ("1.20.0+cu12", (1, 20, 0)),
        ("2.36", (2, 36)),
        ("unknown", ()),
    ],
)
def test_version_tuple_reads_the_leading_release(text, expected):
    assert compat.version_tuple(text) == expected


@pytest.mark.parametrize(
    ("text", "features", "vendor"),
    [
        ("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2\n\nprocessor\t: 1\n", {"fpu", "avx2"}, "amd"),
        ("vendor_id : GenuineIntel\nflags : avx512f avx2\n", {"avx512f", "avx2"}, "intel"),
        ("vendor_id : HygonGenuine\nflags : avx2\n", {"avx2"}, ""),  # a vendor without its own evidence
        ("processor : 0\nFeatures : fp asimd crc32\nCPU implementer : 0x41\n", {"fp", "asimd", "crc32"}, ""),
        ("", set(), ""),
    ],
)
def test_cpu_info_reads_the_flags_and_the_vendor(tmp_path, text, features, vendor) -> None:
    (tmp_path / "cpuinfo").write_text(text)
    assert compat._cpu_info(str(tmp_path / "cpuinfo")) == (frozenset(features), vendor)


def test_an_unreadable_cpuinfo_gives_no_flags_and_no_vendor(tmp_path) -> None:
    assert compat._cpu_info(str(tmp_path / "absent")) == (frozenset(), "")

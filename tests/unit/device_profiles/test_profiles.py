"""Device profiles: the shipped catalogue, lookups, and validation of profile files."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgekiln.device_profiles import DeviceProfile, get_profile, list_profiles, load_profile_file
from edgekiln.device_profiles.registry import build_catalog
from edgekiln.errors import UserError

DATA = Path(__file__).resolve().parents[3] / "edgekiln" / "device_profiles" / "data"

# alias -> (arch, Debian triple, LLVM triple, mcpu, CUDA arch or None)
REQUIRED = {
    "x86_64": ("x86_64", "x86_64-linux-gnu", "x86_64-linux-gnu", "haswell", None),
    "ml_c5": ("x86_64", "x86_64-linux-gnu", "x86_64-linux-gnu", "skylake-avx512", None),
    "rasp3b": ("armv7l", "arm-linux-gnueabihf", "armv7l-linux-gnueabihf", "cortex-a53", None),
    "rasp4b": ("aarch64", "aarch64-linux-gnu", "aarch64-linux-gnu", "cortex-a72", None),
    "rasp5": ("aarch64", "aarch64-linux-gnu", "aarch64-linux-gnu", "cortex-a76", None),
    "jetson_nano": ("aarch64", "aarch64-linux-gnu", "aarch64-linux-gnu", "cortex-a57", "sm_53"),
    "jetson_orin": ("aarch64", "aarch64-linux-gnu", "aarch64-linux-gnu", "cortex-a78ae", "sm_87"),
    "ml_g4dn": ("x86_64", "x86_64-linux-gnu", "x86_64-linux-gnu", "cascadelake", "sm_75"),
    "ml_g5": ("x86_64", "x86_64-linux-gnu", "x86_64-linux-gnu", "znver2", "sm_86"),
    "h100": ("x86_64", "x86_64-linux-gnu", "x86_64-linux-gnu", "haswell", "sm_90"),
    "h200": ("x86_64", "x86_64-linux-gnu", "x86_64-linux-gnu", "haswell", "sm_90"),
}

# A complete, valid profile that the bad-file tests break one key at a time.
VALID_TOML = """\
id = "acme/board-1"
name = "Acme Board 1"
description = "A test board."
aliases = ["acme1"]
backends = ["tvm", "onnxruntime"]

[cpu]
arch = "aarch64"
triple = "aarch64-linux-gnu"
llvm_triple = "aarch64-linux-gnu"
mcpu = "cortex-a72"
mattr = ["+neon"]
cores = 4
peak_gflops_fp32 = 48
memory_bandwidth_gbs = 12.8
source = "arithmetic"

[toolchain]
cc = "aarch64-linux-gnu-g++"
debian_package = "g++-aarch64-linux-gnu"

[emulation]
qemu_binary = "qemu-aarch64"
cpu = "cortex-a72"

[python]
platform_tags = ["manylinux_2_28_aarch64"]
"""


def write(tmp_path: Path, text: str, name: str = "board.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- the shipped catalogue -------------------------------------------------------------


def test_every_shipped_file_loads_and_is_listed():
    files = sorted(DATA.glob("*/*.toml"))
    assert len(files) >= 11
    ids = {load_profile_file(f).id for f in files}
    assert ids == {p.id for p in list_profiles()}
    for f in files:
        # The file's place in the tree is its id, so a profile is found by its name.
        assert load_profile_file(f).id == f"{f.parent.name}/{f.stem}"


def test_list_is_sorted_by_id_and_cached():
    profiles = list_profiles()
    assert [p.id for p in profiles] == sorted(p.id for p in profiles)
    assert list_profiles() == profiles
    assert get_profile("rasp4b") is get_profile("rasp4b")


@pytest.mark.parametrize("alias", sorted(REQUIRED))
def test_required_aliases_resolve_with_expected_targets(alias):
    arch, triple, llvm_triple, mcpu, cuda_arch = REQUIRED[alias]
    profile = get_profile(alias)
    assert profile.cpu.arch == arch
    assert profile.cpu.triple == triple
    assert profile.cpu.llvm_triple == llvm_triple
    assert profile.cpu.mcpu == mcpu
    assert profile.is_cuda == (cuda_arch is not None)
    if cuda_arch:
        assert profile.accelerator.cuda_arch == cuda_arch
        assert profile.backends == ("tvm", "onnxruntime")
    else:
        assert profile.accelerator is None


def test_lookup_by_id_alias_any_case():
    profile = get_profile("raspberry-pi/4b-aarch64")
    assert get_profile("RASP4B") is profile
    assert get_profile("  Raspberry-Pi/4B-AArch64 ") is profile


def test_cross_toolchains_and_emulation():
    rasp3b = get_profile("rasp3b")
    assert rasp3b.toolchain.cc == "arm-linux-gnueabihf-g++"
    assert rasp3b.toolchain.debian_package == "g++-arm-linux-gnueabihf"
    assert rasp3b.emulation.qemu_binary == "qemu-arm"
    assert rasp3b.backends == ("tvm", "litert")
    assert all(t.endswith("_armv7l") for t in rasp3b.python.platform_tags)

    rasp4b = get_profile("rasp4b")
    assert rasp4b.toolchain.cc == "aarch64-linux-gnu-g++"
    assert rasp4b.toolchain.debian_package == "g++-aarch64-linux-gnu"
    assert (rasp4b.emulation.qemu_binary, rasp4b.emulation.cpu) == ("qemu-aarch64", "cortex-a72")

    x86 = get_profile("x86_64")
    assert x86.toolchain.cc is None and x86.toolchain.debian_package is None
    assert x86.emulation is None
    assert x86.backends == ("tvm", "onnxruntime", "litert", "openvino")
    assert get_profile("ml_c5").backends == ("tvm", "onnxruntime", "litert", "openvino")


def test_published_figures():
    # Datasheet figures, so that a slip of a digit is caught.
    assert get_profile("ml_g4dn").accelerator.peak_gflops_fp32 == 8100.0
    assert get_profile("ml_g4dn").accelerator.memory_bandwidth_gbs == 320.0
    assert get_profile("ml_g5").accelerator.memory_bandwidth_gbs == 600.0
    assert get_profile("h100").accelerator.peak_gflops_fp32 == 67000.0
    assert get_profile("h100").accelerator.memory_bandwidth_gbs == 3350.0
    assert get_profile("h200").accelerator.memory_bandwidth_gbs == 4800.0
    assert get_profile("rasp4b").cpu.peak_gflops_fp32 == pytest.approx(4 * 1.5 * 8)
    for profile in list_profiles():
        assert profile.cpu.source and profile.cpu.peak_gflops_fp32 > 0
        assert profile.cpu.memory_bandwidth_gbs > 0
        if profile.accelerator:
            assert profile.accelerator.source


def test_llvm_target_strings():
    assert get_profile("rasp4b").llvm_target() == ("llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72 -mattr=+neon")
    assert get_profile("rasp3b").llvm_target() == (
        "llvm -mtriple=armv7l-linux-gnueabihf -mcpu=cortex-a53 -mattr=+neon,+vfp4"
    )
    assert get_profile("x86_64").llvm_target() == ("llvm -mtriple=x86_64-linux-gnu -mcpu=haswell -mattr=+avx2,+fma")
    no_attrs = dataclasses.replace(get_profile("rasp4b"), cpu=dataclasses.replace(get_profile("rasp4b").cpu, mattr=()))
    assert no_attrs.llvm_target() == "llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72"


def test_tvm_target_dict():
    assert get_profile("rasp4b").tvm_target() == {
        "kind": "llvm",
        "mtriple": "aarch64-linux-gnu",
        "mcpu": "cortex-a72",
        "num-cores": 4,
        "mattr": ["+neon"],
    }
    assert get_profile("rasp3b").tvm_target()["mfloat-abi"] == "hard"
    orin = get_profile("jetson_orin").tvm_target()
    assert orin["kind"] == "cuda" and orin["arch"] == "sm_87"
    assert orin["host"]["mcpu"] == "cortex-a78ae"


def test_profiles_are_valid_targets_for_tvms_llvm():
    # The mcpu names must be ones TVM's own LLVM knows: an unknown one only logs and falls
    # back to a generic cpu, so nothing else would notice.
    import tvm
    from tvm.target import codegen

    for profile in list_profiles():
        assert codegen.llvm_is_valid_cpu(profile.cpu.mcpu, profile.cpu.llvm_triple), profile.id
        target = tvm.target.Target(profile.tvm_target())
        assert target.kind.name == ("cuda" if profile.is_cuda else "llvm")


def test_to_dict_is_json_and_round_trips():
    for profile in list_profiles():
        data = json.loads(json.dumps(profile.to_dict()))
        assert DeviceProfile.from_dict(data) == profile


def test_profiles_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_profile("rasp4b").cpu.cores = 8  # type: ignore[misc]


# --- unknown names -------------------------------------------------------------------


def test_unknown_name_lists_close_matches():
    with pytest.raises(UserError) as info:
        get_profile("rasp4")
    message = info.value.one_line()
    assert "unknown device profile 'rasp4'" in message
    assert "rasp4b" in message
    assert "edgekiln profiles list" in message
    assert info.value.exit_code == 2


def test_unknown_fragment_suggests_by_substring():
    with pytest.raises(UserError, match="jetson_orin"):
        get_profile("orin")


def test_unknown_name_without_matches_still_points_to_list():
    with pytest.raises(UserError) as info:
        get_profile("zzzzqqq")
    assert "close matches" not in info.value.one_line()
    assert "edgekiln profiles list" in info.value.one_line()


# --- profile files ---------------------------------------------------------------------


def test_valid_user_file_loads_and_get_profile_reads_toml_paths(tmp_path):
    path = write(tmp_path, VALID_TOML)
    profile = load_profile_file(path)
    assert profile.id == "acme/board-1"
    assert profile.cpu.peak_gflops_fp32 == 48.0 and isinstance(profile.cpu.peak_gflops_fp32, float)
    assert profile.llvm_target() == "llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72 -mattr=+neon"
    assert get_profile(str(path)) == profile


def test_optional_tables_may_be_left_out(tmp_path):
    text = VALID_TOML.split("[toolchain]")[0] + '[python]\nplatform_tags = ["linux_aarch64"]\n'
    profile = load_profile_file(write(tmp_path, text))
    assert profile.toolchain.cc is None
    assert profile.emulation is None and profile.accelerator is None


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # unknown keys, at the top and in a table
        ('name = "Acme Board 1"', 'name = "Acme Board 1"\nalias = ["x"]', r"unknown key 'alias'"),
        ("cores = 4", "cores = 4\nclock_ghz = 1.5", r"unknown key 'cpu\.clock_ghz'.*valid keys in \[cpu\]"),
        (
            'qemu_binary = "qemu-aarch64"',
            'qemu_binary = "qemu-aarch64"\nmachine = "virt"',
            r"unknown key 'emulation\.machine'",
        ),
        # missing keys
        ('name = "Acme Board 1"\n', "", r"missing required key 'name'"),
        ("cores = 4\n", "", r"missing required key 'cpu\.cores'"),
        ('mcpu = "cortex-a72"\n', "", r"missing required key 'cpu\.mcpu'"),
        # wrong types
        ("cores = 4", 'cores = "4"', r"'cpu\.cores' must be an integer, not str"),
        ("cores = 4", "cores = true", r"'cpu\.cores' must be an integer, not bool"),
        ("peak_gflops_fp32 = 48", 'peak_gflops_fp32 = "fast"', r"'cpu\.peak_gflops_fp32' must be a number"),
        ("peak_gflops_fp32 = 48", "peak_gflops_fp32 = 0", r"'cpu\.peak_gflops_fp32' must be > 0"),
        ('mattr = ["+neon"]', 'mattr = "+neon"', r"'cpu\.mattr' must be a list of strings"),
        ('mattr = ["+neon"]', 'mattr = ["neon"]', r"not in LLVM form"),
        # values outside their sets
        (
            'backends = ["tvm", "onnxruntime"]',
            'backends = ["tvm", "tensorrt"]',
            r"unknown backend 'tensorrt'.*valid: tvm, onnxruntime, litert",
        ),
        ('backends = ["tvm", "onnxruntime"]', "backends = []", r"'backends' must not be empty"),
        ('backends = ["tvm", "onnxruntime"]', 'backends = ["tvm", "tvm"]', r"lists a value twice"),
        (
            'arch = "aarch64"',
            'arch = "riscv64"',
            r"unknown arch 'riscv64' in 'cpu\.arch'.*valid: x86_64, aarch64, armv7l",
        ),
        ('arch = "aarch64"', 'arch = "armv7l"', r"'cpu\.triple' = 'aarch64-linux-gnu' does not match arch 'armv7l'"),
        ('id = "acme/board-1"', 'id = "board-1"', r"'id' = 'board-1' is not of the form 'vendor/board'"),
        ('aliases = ["acme1"]', 'aliases = ["acme/1"]', r"alias 'acme/1'"),
        (
            'qemu_binary = "qemu-aarch64"',
            'qemu_binary = "qemu-arm"',
            r"'emulation\.qemu_binary'; valid for arch 'aarch64': qemu-aarch64",
        ),
        ('"manylinux_2_28_aarch64"', '"manylinux_2_28_x86_64"', r"not for arch 'aarch64'"),
        ("cores = 4", 'cores = 4\nvariants = "rasp5"', r"'cpu\.variants' must be a list of strings"),
        ("cores = 4", 'cores = 4\nvariants = ["../x.toml"]', r"variant '\.\./x\.toml' in 'cpu\.variants' is a file"),
    ],
)
def test_bad_file_names_the_file_and_key(tmp_path, old, new, expected):
    assert old in VALID_TOML
    path = write(tmp_path, VALID_TOML.replace(old, new, 1))
    with pytest.raises(UserError, match=expected) as info:
        load_profile_file(path)
    assert str(path) in info.value.message
    assert info.value.exit_code == 2


def test_table_of_wrong_type():
    data = get_profile("rasp4b").to_dict()
    data["cpu"] = 3
    with pytest.raises(UserError, match=r"device profile <profile>: \[cpu\] must be a table, not int"):
        DeviceProfile.from_dict(data)


def test_bad_accelerator(tmp_path):
    acc = (
        '\n[accelerator]\nkind = "cuda"\nname = "GPU"\ncuda_arch = "{arch}"\n'
        'peak_gflops_fp32 = 1.0\nmemory_bandwidth_gbs = 1.0\nsource = "x"\n'
    )
    ok = load_profile_file(write(tmp_path, VALID_TOML + acc.format(arch="sm_87")))
    assert ok.is_cuda and ok.tvm_target()["arch"] == "sm_87"
    with pytest.raises(UserError, match=r"'accelerator\.cuda_arch' = '87' is not a CUDA arch"):
        load_profile_file(write(tmp_path, VALID_TOML + acc.format(arch="87")))
    with pytest.raises(UserError, match=r"unknown kind 'rocm'.*valid: cuda"):
        load_profile_file(write(tmp_path, VALID_TOML + acc.format(arch="sm_87").replace("cuda", "rocm", 1)))


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_profile_file(tmp_path / "missing.toml")
    with pytest.raises(UserError, match="not valid TOML"):
        load_profile_file(write(tmp_path, "id = \n"))


def test_duplicate_alias_or_id_across_files_is_an_error(tmp_path):
    first = load_profile_file(write(tmp_path, VALID_TOML, "a.toml"))
    other = VALID_TOML.replace('id = "acme/board-1"', 'id = "acme/board-2"')
    second = load_profile_file(write(tmp_path, other, "b.toml"))
    with pytest.raises(UserError, match=r"'acme1' is used by both a\.toml \(acme/board-1\) and b\.toml"):
        build_catalog([(first, "a.toml"), (second, "b.toml")])

    same_id = load_profile_file(write(tmp_path, VALID_TOML.replace('"acme1"', '"acme2"'), "c.toml"))
    with pytest.raises(UserError, match=r"'acme/board-1' is used by both"):
        build_catalog([(first, "a.toml"), (same_id, "c.toml")])

    # Names are compared case-insensitively, as lookups are.
    upper = load_profile_file(write(tmp_path, other.replace('"acme1"', '"ACME1"'), "d.toml"))
    with pytest.raises(UserError, match="used by both"):
        build_catalog([(first, "a.toml"), (upper, "d.toml")])

    catalog = build_catalog([(first, "a.toml")])
    assert catalog.by_name["acme1"] is first


def test_nothing_is_loaded_at_import():
    # A fresh interpreter, since this one has loaded the catalogue already.
    code = (
        "import edgekiln.device_profiles\n"
        "from edgekiln.device_profiles import registry\n"
        "print(registry._catalog.cache_info().currsize)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"

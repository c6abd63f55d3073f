"""The native runtime on this host: libedgekiln's C API (tested by a C program), edgekiln-run,
`compile --native-runtime`, and the hostile artifacts the Python runtime refuses."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from edgekiln.artifact import unpack
from edgekiln.artifact.binaries import elf_machine
from tests.data import native as helpers
from tests.data.hostile import artifacts as hostile


@pytest.fixture(scope="session")
def runtime():
    from edgekiln.compile.native import ensure_native_runtime
    from edgekiln.device_profiles import get_profile

    return ensure_native_runtime(get_profile("x86_64"))


@pytest.fixture(scope="session")
def c_test(runtime, tmp_path_factory):
    return helpers.build_c(runtime, helpers.C_TEST, tmp_path_factory.mktemp("c") / "test_dlr_api", "gcc")


@pytest.fixture(scope="session")
def small(runtime, tmp_path_factory):
    """The small classifier compiled for x86_64 with the native runtime, and extracted."""
    from edgekiln.compile.api import CompileOptions, compile_model

    tmp = tmp_path_factory.mktemp("small")
    model = helpers.small_classifier(tmp / "small.onnx")
    options = CompileOptions(backend="tvm", native_runtime=True)
    artifact = compile_model(model, "x86_64", tmp / "small.tar.gz", options=options)
    unpack(artifact.path, tmp / "x")
    return artifact, tmp / "x"


def _refused(c_test, path, text, **env):
    proc = subprocess.run(
        [str(c_test), "refuse", str(path), text], capture_output=True, text=True, env={**os.environ, **env}
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip()


def test_the_library_is_small_and_needs_only_glibc(runtime):
    from edgekiln.compile.native import build_info

    info = build_info(runtime)
    sizes = {rel: entry["size"] for rel, entry in info["files"].items()}
    assert sizes["lib/libedgekiln.so"] + sizes["bin/edgekiln-run"] <= 5_000_000
    needed = subprocess.run(["readelf", "-d", str(runtime.library)], capture_output=True, text=True).stdout
    assert "libstdc++" not in needed and "libgcc_s" not in needed
    assert info["glibc"] and elf_machine(runtime.library) == "x86_64"


def test_compile_bundles_and_validates_through_the_native_runtime(small, runtime):
    artifact, root = small
    manifest = artifact.manifest
    assert manifest.validation.status == "passed"
    assert manifest.validation.executed_on.endswith("native runtime (cpu)")
    assert manifest.validation.max_abs_diff <= 1e-4 and manifest.validation.top1_agreement == 1.0
    record = manifest.extra["native_runtime"]
    assert record["version"] == runtime.version and record["arch"] == "x86_64"
    for rel, digest in record["sha256"].items():
        assert hashlib.sha256((root / rel).read_bytes()).hexdigest() == digest
    assert {f.role for f in manifest.files} >= {"native-runtime-library", "native-runner", "native-header"}


def test_c_api_runs_the_model_bit_for_bit_like_the_python_runtime(small, c_test, tmp_path):
    artifact, root = small
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    x.tofile(tmp_path / "x.raw")
    for path in (artifact.path, root):  # packed and extracted
        proc = subprocess.run(
            [str(c_test), "run", str(path), str(tmp_path / "x.raw"), str(tmp_path / "y.raw")],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        native = np.fromfile(tmp_path / "y.raw", dtype=np.float32).reshape(1, 10)
        code = (
            "import sys, numpy as np, edgekiln\n"
            "np.save(sys.argv[3], edgekiln.load(sys.argv[1]).run([np.load(sys.argv[2])])[0])\n"
        )
        np.save(tmp_path / "x.npy", x)
        subprocess.run(
            [sys.executable, "-c", code, str(path), str(tmp_path / "x.npy"), str(tmp_path / "py.npy")], check=True
        )
        python = np.load(tmp_path / "py.npy")
        assert np.array_equal(native.view(np.uint32), python.view(np.uint32))


def test_every_c_api_misuse_returns_an_error_with_a_message(small, c_test):
    proc = subprocess.run([str(c_test), "errors", str(small[0].path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines())
    assert "unknown input name 'no_such_input'" in lines["a wrong input name"]
    assert "must have shape [1, 3, 16, 16], got [1, 3, 16, 17]" in lines["a wrong input size"]
    assert "runs on the CPU only" in lines["a CUDA device"]
    assert "RunDLRModel first" in lines["an output before the first run"]
    assert len(lines) == 10


def test_edgekiln_run_prints_what_edgekiln_run_prints(small, tmp_path):
    artifact, root = small
    np.save(tmp_path / "x.npy", np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype(np.float32))
    native = subprocess.run(
        [str(root / "bin/edgekiln-run"), str(artifact.path), str(tmp_path / "x.npy"), "--json", "--top-k", "3"],
        capture_output=True,
        text=True,
    )
    assert native.returncode == 0, native.stderr
    python = subprocess.run(
        [sys.executable, "-m", "edgekiln.cli.main", "run", str(artifact.path), str(tmp_path / "x.npy"), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    ours, theirs = json.loads(native.stdout), json.loads(python.stdout)
    assert ours["profile"] == theirs["profile"]
    assert ours["results"][0]["outputs"] == theirs["results"][0]["outputs"]
    assert [c["index"] for c in ours["results"][0]["top"]] == [c["index"] for c in theirs["results"][0]["top"][:3]]
    bad = subprocess.run([str(root / "bin/edgekiln-run"), str(artifact.path), str(tmp_path / "none.npy")],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and "none.npy" in bad.stderr


HOSTILE = {
    "sparse": (lambda p: hostile.sparse_member(p), "over the limit"),
    "claimed": (lambda p: hostile.claimed_member(p), "over the limit of 1073741824"),
    "huge-header": (lambda p: hostile.huge_pax_header(p), "unpacks to more than"),
    "labels-absolute": (lambda p: hostile.plain(p, {"m.so": b"x"}, labels="/etc/passwd"), "absolute"),
    "labels-escape": (lambda p: hostile.plain(p, {"m.so": b"x"}, labels="../labels.txt"), "escapes the artifact"),
    "labels-unlisted": (lambda p: hostile.plain(p, {"m.so": b"x"}, labels="unlisted.txt"), "not one of the artifact"),
    "bigger-than-listed": (
        lambda p: hostile.archive(
            p, [hostile.manifest_member(hostile.manifest({"w.bin": b"abc"})), hostile.regular("w.bin", b"abcd" * 1000)]
        ),
        "4000 bytes; the manifest says 3",
    ),
    "manifest-twice": (
        lambda p: hostile.archive(
            p,
            [
                hostile.manifest_member(hostile.manifest({"w.bin": b"abc"})),
                hostile.regular("w.bin", b"abc"),
                hostile.manifest_member(hostile.manifest({})),
            ],
        ),
        "manifest.json twice",
    ),
    "manifest-late": (
        lambda p: hostile.archive(p, [hostile.regular("w.bin", b"abc"), hostile.manifest_member(hostile.manifest({}))]),
        "does not start with manifest.json",
    ),
    "deep-json": (lambda p: hostile.archive(p, [hostile.manifest_member(hostile.deep_json())]), "not valid JSON"),
    "long-integer": (lambda p: hostile.archive(p, [hostile.manifest_member(hostile.long_integer())]), "manifest"),
    "huge-manifest": (
        lambda p: hostile.archive(p, [hostile.manifest_member(b" " * (2 << 20) + b"{}")]),
        "over the limit of 1048576",
    ),
    "wrong-type": (lambda p: hostile.plain(p, {}, inputs=5), "inputs must be a list"),
    "path-escape": (
        lambda p: hostile.archive(p, [hostile.manifest_member(hostile.manifest({"../m.so": b"x"}))]),
        "escapes the artifact",
    ),
    "unlisted-member": (
        lambda p: hostile.archive(p, [hostile.manifest_member(hostile.manifest({})), hostile.regular("m.so", b"x")]),
        "not listed in the manifest",
    ),
    "tampered": (
        lambda p: hostile.archive(
            p, [hostile.manifest_member(hostile.manifest({"m.so": b"good"})), hostile.regular("m.so", b"evil")]
        ),
        "has sha256",
    ),
    "missing-member": (
        lambda p: hostile.archive(p, [hostile.manifest_member(hostile.manifest({"m.so": b"x"}))]),
        "lacks files its manifest lists: m.so",
    ),
    "symlink-member": (
        lambda p: hostile.archive(p, [hostile.manifest_member(hostile.manifest({"m.so": b""})), _link("m.so")]),
        "not a regular file",
    ),  # fmt: skip
}


def _link(name):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return info, None


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_artifacts_are_refused_as_the_python_runtime_refuses_them(c_test, tmp_path, case):
    from edgekiln.errors import IntegrityError
    from edgekiln.runtime.model import Model

    make, text = HOSTILE[case]
    path = make(tmp_path / "a.tar.gz")
    before = set(os.listdir("/tmp"))
    message = _refused(c_test, path, text, TMPDIR="/tmp")
    assert message and "\n" not in message
    # Nothing is left behind: the private extraction folder went with the refusal.
    assert not {n for n in set(os.listdir("/tmp")) - before if n.startswith("edgekiln-model-")}
    with pytest.raises((IntegrityError,)):
        Model(path)


def test_the_extracted_directory_gets_the_same_checks(c_test, small, tmp_path):
    import shutil

    root = tmp_path / "x"
    shutil.copytree(small[1], root)
    lib = root / "lib" / "model.so"
    data = lib.read_bytes()
    lib.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    assert "differs from the manifest" in _refused(c_test, root, "differs from the manifest")
    shutil.copytree(small[1], tmp_path / "y")
    (tmp_path / "y" / "lib").rename(tmp_path / "real-lib")
    os.symlink(tmp_path / "real-lib", tmp_path / "y" / "lib")
    assert "symlink" in _refused(c_test, tmp_path / "y", "passes through a symlink")


def _marked_artifact(tmp_path, name, arch, tamper=False):
    from edgekiln.artifact.manifest import Manifest
    from edgekiln.artifact.package import pack

    root = tmp_path / name
    (root / "lib").mkdir(parents=True)
    lib = helpers.marker_library(root / "lib" / "model.so")
    data = hostile.manifest({}, backend="tvm", runtime={"arch": arch})
    data["files"] = [
        {"path": "lib/model.so", "size": lib.stat().st_size, "sha256": hashlib.sha256(lib.read_bytes()).hexdigest(),
         "role": "model-library"}
    ]  # fmt: skip
    manifest = Manifest.from_dict(data)
    if tamper:  # extracted, so that the file itself changes after the manifest was written
        (root / "manifest.json").write_text(manifest.to_json())
        data = lib.read_bytes()
        lib.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
        return root
    return pack(manifest, root, tmp_path / f"{name}.tar.gz")


def test_nothing_is_mapped_before_the_checks_pass(c_test, tmp_path):
    marker = tmp_path / "mapped"
    env = {helpers.MARKER_ENV: str(marker)}
    # The control: a library that passes every check is mapped, and leaves its mark.
    _refused(c_test, _marked_artifact(tmp_path, "ok", "x86_64"), "holds no Relax VM executable", **env)
    assert marker.exists()
    marker.unlink()
    _refused(c_test, _marked_artifact(tmp_path, "arm", "aarch64"), "needs a aarch64 CPU; this device is x86_64", **env)
    tampered = _marked_artifact(tmp_path, "bad", "x86_64", tamper=True)
    _refused(c_test, tampered, "differs from the manifest", **env)
    assert not marker.exists()

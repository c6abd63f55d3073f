"""Emulated boards: ARM artifacts run on this x86-64 host under qemu-user, through the device
runtime in the board's own Python, and match ONNX Runtime on the host.

The rasp4b sysroot is built on first use (about half a minute, downloads some 40 MB of
Debian packages and wheels) and cached in $EDGEKILN_CACHE/emulation like any other run.
"""

from __future__ import annotations

import configparser
import dataclasses
import json
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import edgekiln
from edgekiln import zoo
from edgekiln.artifact import unpack
from edgekiln.artifact.binaries import elf_machine
from edgekiln.device_profiles import get_profile
from edgekiln.emulation import cache_dir, ensure_sysroot, find_qemu, find_sysroot, python_prefix, run
from edgekiln.emulation.sysroot import DEVICE_REQUIREMENTS, MANIFEST_NAME, Sysroot, recipe_for
from edgekiln.errors import DependencyError, UserError

# A qemu run of resnet18 takes some 20 s per input on a 2-core host; nothing here should
# come near this, and a hang must not stall the suite.
TIMEOUT = 600
HEAVY = ("tvm", "onnx", "onnxruntime", "torch", "tensorflow")

# Runs an artifact as a device does; reports the machine it ran on and the heavy modules loaded.
DEVICE_SCRIPT = """
import json, platform, sys
import numpy as np
import edgekiln
model = edgekiln.load(sys.argv[1])
with np.load(sys.argv[2]) as data:
    outs = [model.run({model.get_input_names()[0]: data[k]})[0] for k in sorted(data.files)]
np.save(sys.argv[3], np.stack(outs))
heavy = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY_NAMES or m.startswith("edgekiln.compile"))
print(json.dumps({"machine": platform.machine(), "heavy": heavy}))
""".replace("HEAVY_NAMES", repr(HEAVY))


@pytest.fixture(scope="module")
def rasp4b() -> Sysroot:
    return ensure_sysroot("rasp4b")


def _cli(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgekiln.cli.main", *argv], capture_output=True, text=True, env=env, timeout=TIMEOUT
    )


def test_cli_runs_python_on_an_aarch64_board(rasp4b):
    proc = _cli("emulate", "rasp4b", "--", "python", "-c", "import platform; print(platform.machine())")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "aarch64\n"


def test_cli_exits_with_the_command_status_and_describes_the_sysroot(rasp4b):
    proc = _cli("emulate", "rasp4b", "--info", "--json", "--", "python", "-c", "import sys; sys.exit(3)")
    assert proc.returncode == 3
    info = json.loads(proc.stderr)  # --info goes to stderr when a command follows
    assert info["profile"] == "raspberry-pi/4b-aarch64" and info["missing"] == []
    # The board gets the tvm-ffi that the device install pins, the host's too.
    assert info["python_packages"]["apache-tvm-ffi"] == metadata.version("apache-tvm-ffi") == "0.1.14.post0"


def test_sysroot_holds_the_board_userland_and_the_device_wheels(rasp4b):
    assert rasp4b.profile == "raspberry-pi/4b-aarch64"
    assert (rasp4b.arch, rasp4b.debian_arch, rasp4b.qemu_cpu) == ("aarch64", "arm64", "cortex-a72")
    assert rasp4b.path == cache_dir("rasp4b") and (rasp4b.path / MANIFEST_NAME).is_file()
    assert elf_machine(rasp4b.python_path) == "aarch64"
    assert elf_machine(rasp4b.host_path("/lib/ld-linux-aarch64.so.1")) == "aarch64"
    packages = dict(rasp4b.packages)
    assert packages["python3.11"].startswith("3.11.") and "libstdc++6" in packages and "libc6" in packages
    assert {"numpy", "apache-tvm-ffi", "pillow"} <= set(rasp4b.python_packages())
    # The backend runtimes, as locked (and hash-checked) by the recipe.
    assert {k: rasp4b.python_packages()[k] for k in ("onnxruntime", "ai-edge-litert")} == {
        "onnxruntime": "1.32.0",
        "ai-edge-litert": "2.3.0",
    }
    assert all(w.endswith("aarch64.whl") or w.endswith("-none-any.whl") for w in rasp4b.wheels)
    # Nothing shadows the host's scratch directories, where callers pass their files.
    assert not rasp4b.host_path("/tmp").exists()
    assert find_sysroot("raspberry-pi/4b-aarch64") == rasp4b
    assert ensure_sysroot(get_profile("rasp4b")) == rasp4b  # cached: no second build


def test_device_requirements_are_setup_cfgs():
    config = configparser.ConfigParser()
    config.read(Path(edgekiln.__file__).parents[1] / "setup.cfg")
    requires = [r.strip() for r in config["options"]["install_requires"].splitlines() if r.strip()]
    assert tuple(r for r in requires if ";" not in r) == DEVICE_REQUIREMENTS


def test_emulated_process_reads_and_writes_host_paths(rasp4b, tmp_path):
    (tmp_path / "in.txt").write_text("from the host")
    script = "import sys; open(sys.argv[2], 'w').write(open(sys.argv[1]).read().upper())"
    proc = run(
        "rasp4b",
        ["python", "-c", script, str(tmp_path / "in.txt"), "out.txt"],
        cwd=tmp_path,
        timeout=TIMEOUT,
        capture_output=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.txt").read_text() == "FROM THE HOST"


def test_programs_and_scripts_come_from_the_sysroot(rasp4b):
    # pydoc3.11 is a #! script: run through the board's interpreter, not the host's kernel.
    proc = run("rasp4b", ["pydoc3.11", "keyword.iskeyword"], timeout=TIMEOUT, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert "iskeyword" in proc.stdout
    # `edgekiln` is the device's command, run by the board's Python.
    proc = run("rasp4b", ["edgekiln", "--version"], timeout=TIMEOUT, capture_output=True)
    assert (proc.returncode, proc.stdout.strip()) == (0, f"edgekiln {edgekiln.__version__}"), proc.stderr
    with pytest.raises(UserError, match="not a program in the raspberry-pi/4b-aarch64 sysroot"):
        run("rasp4b", ["no-such-program"])
    with pytest.raises(UserError, match="no command"):
        run("rasp4b", [])


# resnet18 (1.8 GMACs) takes about 20 s per input under qemu on a 2-core host, mobilenet_v2
# (0.3 GMACs) about 4 s: one input for the big one keeps the suite's time modest, two for
# the small one check that a loaded model runs more than once.
@pytest.mark.parametrize(("name", "count"), [("mobilenet_v2", 2), ("resnet18", 1)])
def test_arm_artifact_matches_onnxruntime_on_the_emulated_board(name, count, rasp4b, compiled, tmp_path):
    artifact = compiled(f"zoo:{name}", "rasp4b")
    rng = np.random.default_rng(2024)
    inputs = [rng.standard_normal((1, 3, 224, 224)).astype(np.float32) for _ in range(count)]
    np.savez(tmp_path / "in.npz", **{f"{i:02d}": x for i, x in enumerate(inputs)})

    start = time.perf_counter()
    proc = run(
        "rasp4b",
        ["python", "-c", DEVICE_SCRIPT, str(artifact.path), str(tmp_path / "in.npz"), str(tmp_path / "out.npy")],
        timeout=TIMEOUT,
        capture_output=True,
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report == {"machine": "aarch64", "heavy": []}

    session = ort.InferenceSession(zoo.build(name).SerializeToString(), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    expected = np.stack([session.run(None, {feed: x})[0] for x in inputs])
    got = np.load(tmp_path / "out.npy")
    assert got.shape == expected.shape
    assert float(np.abs(got - expected).max()) <= 1e-4
    assert (got.reshape(len(inputs), -1).argmax(1) == expected.reshape(len(inputs), -1).argmax(1)).all()
    print(f"{name} on emulated rasp4b: {elapsed:.1f} s for {len(inputs)} inputs (with start-up)")


def test_the_worker_runs_through_python_prefix(rasp4b, compiled, tmp_path):
    # How compile-time validation and the harness run an ARM artifact: the worker module of
    # edgekiln.execute under the board's Python, with host paths.
    from edgekiln.execute.runners import EmulatedRunner

    root = tmp_path / "artifact"
    unpack(compiled("zoo:mobilenet_v2", "rasp4b").path, root)
    x = np.random.default_rng(7).standard_normal((1, 3, 224, 224)).astype(np.float32)
    worker = EmulatedRunner(get_profile("rasp4b")).start("tvm")
    try:
        info = worker.load({"kind": "artifact", "path": str(root), "device": "cpu"}, [[x]])
        ((out,),) = worker.outputs()
    finally:
        worker.close()
    assert info.compiler_loaded is False and info.version.startswith("tvm")
    session = ort.InferenceSession(zoo.build("mobilenet_v2").SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert float(np.abs(out - expected).max()) <= 1e-4


def test_rasp3b_board_runs_python_and_numpy_without_the_tvm_runtime():
    sysroot = ensure_sysroot("rasp3b")
    assert (sysroot.arch, sysroot.debian_arch, sysroot.qemu_cpu) == ("armv7l", "armhf", "max")
    assert elf_machine(sysroot.python_path) == "arm"
    assert any("apache-tvm-ffi" in m for m in sysroot.missing)
    script = (
        "import importlib.util, platform, numpy; "
        "print(platform.machine(), int((numpy.arange(4.0) @ numpy.arange(4.0))), "
        "importlib.util.find_spec('tvm_ffi') is None)"
    )
    proc = run("rasp3b", ["python", "-c", script], timeout=TIMEOUT, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["armv7l", "14", "True"]


# ---- errors ------------------------------------------------------------------------------


def test_unknown_profile_is_a_user_error():
    with pytest.raises(UserError, match="unknown device profile 'rasp9'.*rasp4b"):
        run("rasp9", ["python"])
    proc = _cli("emulate", "rasp9", "--", "python")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "unknown device profile" in proc.stderr


def test_profile_without_emulation_is_a_user_error():
    with pytest.raises(UserError, match="runs natively on this host"):
        python_prefix("x86_64")
    arm_without = dataclasses.replace(get_profile("rasp4b"), emulation=None)
    with pytest.raises(UserError, match=r"has no \[emulation\] table"):
        ensure_sysroot(arm_without)
    proc = _cli("emulate", "x86_64", "--", "python", "-V")
    assert proc.returncode == 2 and "runs natively" in proc.stderr


def test_missing_qemu_is_a_dependency_error_naming_the_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DependencyError) as info:
        run("rasp4b", ["python", "-c", "pass"])
    message = info.value.one_line()
    assert "qemu-aarch64 is not installed" in message
    assert "qemu-user" in message and "make setup" in message and "bookworm-backports" in message
    proc = _cli("emulate", "rasp4b", "--", "python", "-c", "pass", env={"PATH": str(tmp_path)})
    assert proc.returncode == 3 and "qemu-aarch64 is not installed" in proc.stderr


def test_old_qemu_is_a_dependency_error(monkeypatch, tmp_path):
    fake = tmp_path / "qemu-aarch64"
    fake.write_text("#!/bin/sh\necho 'qemu-aarch64 version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    with pytest.raises(DependencyError, match=r"QEMU 7\.2\.22; emulating raspberry-pi/4b-aarch64 needs QEMU >= 8"):
        find_qemu("rasp4b")


def test_failed_build_leaves_no_cache_entry(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEKILN_CACHE", str(tmp_path / "cache"))
    # A mirror without the suite: apt fails at once (an unreachable one fails the same way
    # after apt's retries).
    monkeypatch.setenv("EDGEKILN_DEBIAN_MIRROR", f"file://{tmp_path}/no-mirror/debian")
    monkeypatch.setenv("EDGEKILN_DEBIAN_SECURITY_MIRROR", f"file://{tmp_path}/no-mirror/debian-security")
    with pytest.raises(DependencyError, match="cannot download the Debian bookworm arm64 package lists"):
        ensure_sysroot("rasp4b")
    left = sorted(p.name for p in (tmp_path / "cache" / "emulation").iterdir())
    assert left == [".raspberry-pi_4b-aarch64.lock"]
    assert find_sysroot("rasp4b") is None


def test_a_sysroot_from_another_recipe_is_not_used(rasp4b, monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEKILN_CACHE", str(tmp_path))
    entry = cache_dir("rasp4b")
    (entry / "root/usr/bin").mkdir(parents=True)
    (entry / "root/usr/bin/python3.11").write_bytes(b"")
    profile = get_profile("rasp4b")
    current = dataclasses.replace(rasp4b, path=entry)
    current.save()
    assert find_sysroot(profile) == current
    dataclasses.replace(current, recipe="0" * 16).save()
    assert find_sysroot(profile) is None
    assert current.recipe == recipe_for(profile).digest(profile.python.platform_tags)

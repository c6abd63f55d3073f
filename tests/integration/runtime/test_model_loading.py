"""The runtime refuses changed, padded or escaping artifacts before loading any library,
and artifacts built for another machine with a message naming what they need."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

# Loads an artifact in a fresh process and reports the error and whether any TVM library or
# the FFI was touched before it was raised.
LOAD_SCRIPT = """
import json, sys
import edgekiln
from edgekiln.errors import EdgekilnError
try:
    edgekiln.load(sys.argv[1])
    error = None
except EdgekilnError as exc:
    error = {"type": type(exc).__name__, "message": exc.one_line()}
maps = open("/proc/self/maps").read()
print(json.dumps({"error": error, "tvm_library_mapped": "libtvm" in maps or "model.so" in maps,
                  "ffi_imported": "tvm_ffi" in sys.modules}))
"""


def load_in_child(path: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(path)], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def _rewrite(src: Path, dst: Path, edit) -> None:
    """Copy an artifact member by member, letting ``edit(name, data)`` change, drop or add."""
    with tarfile.open(src) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for member, data in edit(members):
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    dst.write_bytes(gzip.compress(out.getvalue()))


@pytest.fixture(scope="module")
def artifact(compiled):
    return compiled("zoo:mobilenet_v2", "x86_64").path


def test_one_changed_byte_in_the_library(artifact, tmp_path):
    def flip(members):
        for member, data in members:
            if member.name == "lib/model.so":
                data = data[:5000] + bytes([data[5000] ^ 1]) + data[5001:]
            yield member, data

    _rewrite(artifact, tmp_path / "a.tar.gz", flip)
    result = load_in_child(tmp_path / "a.tar.gz")
    assert result["error"]["type"] == "IntegrityError"
    assert "lib/model.so" in result["error"]["message"] and "sha256" in result["error"]["message"]
    assert not result["tvm_library_mapped"] and not result["ffi_imported"]


def test_an_extra_member(artifact, tmp_path):
    def add(members):
        yield from members
        yield tarfile.TarInfo("lib/extra.so"), b"\x7fELF payload"

    _rewrite(artifact, tmp_path / "a.tar.gz", add)
    result = load_in_child(tmp_path / "a.tar.gz")
    assert result["error"]["type"] == "IntegrityError" and "not listed" in result["error"]["message"]
    assert not result["tvm_library_mapped"]


def test_a_dotdot_member(artifact, tmp_path):
    def escape(members):
        yield from members
        yield tarfile.TarInfo("../../evil.so"), b"payload"

    _rewrite(artifact, tmp_path / "a.tar.gz", escape)
    result = load_in_child(tmp_path / "a.tar.gz")
    assert result["error"]["type"] == "IntegrityError" and "escapes" in result["error"]["message"]
    assert not result["tvm_library_mapped"]
    assert not (tmp_path.parent / "evil.so").exists()


def test_a_changed_manifest_requirement_is_caught_by_the_hash_of_nothing_else(artifact, tmp_path):
    """Editing manifest.json to claim another file hash makes the real file fail its check."""

    def lie(members):
        for member, data in members:
            if member.name == "manifest.json":
                manifest = json.loads(data)
                for entry in manifest["files"]:
                    if entry["path"] == "lib/model.so":
                        entry["sha256"] = "0" * 64
                data = json.dumps(manifest).encode()
            yield member, data

    _rewrite(artifact, tmp_path / "a.tar.gz", lie)
    assert load_in_child(tmp_path / "a.tar.gz")["error"]["type"] == "IntegrityError"


def test_rasp4b_artifact_on_this_host_names_aarch64(compiled):
    from edgekiln.runtime.compat import host_info

    if host_info().arch == "aarch64":
        pytest.skip("this host is aarch64")
    result = load_in_child(compiled("zoo:mobilenet_v2", "rasp4b").path)
    assert result["error"]["type"] == "CompatibilityError"
    assert "aarch64" in result["error"]["message"] and host_info().arch in result["error"]["message"]
    assert not result["tvm_library_mapped"]


def test_gpu_artifact_on_a_host_without_gpu(compiled):
    from edgekiln.runtime.compat import cuda_info
    from tests.conftest import nvcc_available

    if not nvcc_available():
        pytest.skip("nvcc is not installed, so no CUDA artifact can be built")
    if cuda_info() is not None:
        pytest.skip("this host has a GPU")
    path = compiled("zoo:mobilenet_v3_small", "h200").path
    code = (
        "import sys, edgekiln\nfrom edgekiln.errors import CompatibilityError\n"
        "try:\n    edgekiln.load(sys.argv[1], device='cuda')\n"
        "except CompatibilityError as e:\n    print(e.one_line())\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True).stdout
    assert "needs an NVIDIA GPU (sm_90)" in out

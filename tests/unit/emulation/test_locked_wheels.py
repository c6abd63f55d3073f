"""The emulated board's locked wheels: exact pins, checked against their sha256 before they
are unpacked (pip runs against a local folder of wheels built here: nothing downloads)."""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from pathlib import Path

import pytest

from edgekiln.device_profiles import get_profile
from edgekiln.emulation.assemble import install_locked_wheels, platform_tags_for_pip
from edgekiln.emulation.recipe import RECIPES, recipe_for
from edgekiln.errors import IntegrityError

TAGS = ("manylinux_2_28_aarch64", "manylinux2014_aarch64")


def _wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal valid pure-Python wheel holding one module."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": b"VALUE = 42\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}"
        for path, data in files.items()
    ]
    files[f"{dist}/RECORD"] = ("\n".join([*record, f"{dist}/RECORD,,"]) + "\n").encode()
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in files.items():
            archive.writestr(member, data)
    return path


@pytest.fixture
def local_index(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "index"
    folder.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return folder


def test_a_locked_wheel_with_its_hash_is_unpacked(local_index, tmp_path):
    wheel = _wheel(local_index, "boardpkg", "1.0")
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    site = tmp_path / "site"
    names = install_locked_wheels((("boardpkg==1.0", sha),), TAGS, tmp_path / "dl", site)
    assert names == ["boardpkg-1.0-py3-none-any.whl"]
    assert (site / "boardpkg.py").read_text() == "VALUE = 42\n"


def test_a_wheel_that_does_not_match_its_pin_is_refused_and_not_unpacked(local_index, tmp_path):
    _wheel(local_index, "boardpkg", "1.0")
    site = tmp_path / "site"
    with pytest.raises(IntegrityError, match="does not match its pinned sha256"):
        install_locked_wheels((("boardpkg==1.0", "0" * 64),), TAGS, tmp_path / "dl", site)
    assert not site.exists()


def test_the_aarch64_board_locks_both_backend_runtimes_with_hashes():
    locked = dict(RECIPES["aarch64"].locked)
    assert locked.keys() >= {"onnxruntime==1.32.0", "ai-edge-litert==2.3.0"}
    assert all(re.fullmatch(r"[a-z0-9.-]+==[0-9][0-9A-Za-z.]*", pin) for pin in locked)
    assert all(re.fullmatch(r"[0-9a-f]{64}", sha) for sha in locked.values())
    assert {"onnxruntime", "ai_edge_litert.interpreter"} <= set(RECIPES["aarch64"].imports)
    # The recipe's digest names the cache entry: a changed lock builds a new board beside the old.
    profile = get_profile("rasp4b")
    recipe = recipe_for(profile)
    assert recipe.digest(profile.python.platform_tags) != RECIPES["armv7l"].digest(profile.python.platform_tags)


def test_pip_gets_every_older_manylinux_tag_as_a_device_would():
    tags = platform_tags_for_pip(TAGS)
    assert tags[:3] == ["manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_26_aarch64"]
    assert tags[-2:] == ["manylinux_2_17_aarch64", "manylinux2014_aarch64"] and len(tags) == len(set(tags)) == 13

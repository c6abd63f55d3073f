"""CPU variants of a TVM artifact: the manifest records what each build needs, and the
runtime loads the first one the CPU executes (no TVM needed: the choice is made before
anything is loaded)."""

from __future__ import annotations

import json

import pytest

from edgekiln.artifact.manifest import Manifest
from edgekiln.errors import CompatibilityError, UserError
from edgekiln.runtime.executors.tvm import choose_library
from tests.data.hostile import artifacts as hostile

AVX512 = ["avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"]
AVX2_HOST = frozenset({"avx2", "fma", "f16c", "bmi2", "movbe"})
AVX512_HOST = AVX2_HOST | frozenset(AVX512)


def _manifest(variant_features: list[str] | None = AVX512) -> Manifest:
    files = {"lib/model.so": b"portable", "lib/model-skylake-avx512.so": b"avx512"}
    data = hostile.manifest(files, backend="tvm")
    for entry in data["files"]:
        entry["role"] = "model-library"
        if entry["path"] == "lib/model-skylake-avx512.so":
            entry["role"] = "model-library-variant"
            if variant_features is not None:
                entry["cpu_features"] = variant_features
    return Manifest.from_dict(json.loads(json.dumps(data)))


def test_the_variant_loads_where_the_cpu_has_its_features_and_the_portable_build_elsewhere() -> None:
    manifest = _manifest()
    assert choose_library(manifest, AVX512_HOST).path == "lib/model-skylake-avx512.so"
    assert choose_library(manifest, AVX2_HOST).path == "lib/model.so"
    # One missing flag is enough to stay portable (AVX-512F without VL: Knights Landing).
    assert choose_library(manifest, AVX512_HOST - {"avx512vl"}).path == "lib/model.so"
    # A CPU whose features cannot be read gets the code every machine of the class runs.
    assert choose_library(manifest, frozenset()).path == "lib/model.so"


def test_a_forced_library_loads_if_the_cpu_runs_it_and_anything_else_is_refused() -> None:
    manifest = _manifest()
    assert choose_library(manifest, AVX512_HOST, "lib/model.so").path == "lib/model.so"
    with pytest.raises(CompatibilityError, match="this CPU lacks: avx512bw, avx512cd"):
        choose_library(manifest, AVX2_HOST, "lib/model-skylake-avx512.so")
    for hostile_path in ("../../etc/passwd", "lib/libtvm_runtime.so", "labels.txt"):
        with pytest.raises(UserError, match="is not a model library of this artifact") as err:
            choose_library(manifest, AVX512_HOST, hostile_path)
        assert "lib/model-skylake-avx512.so, lib/model.so" in (err.value.hint or "")


def test_the_manifest_keeps_a_files_cpu_features_and_writes_none_where_there_are_none() -> None:
    manifest = _manifest()
    by_path = {f.path: f for f in manifest.files}
    assert by_path["lib/model-skylake-avx512.so"].cpu_features == tuple(AVX512)
    assert by_path["lib/model.so"].cpu_features == ()
    written = {f["path"]: f for f in manifest.to_dict()["files"]}
    assert written["lib/model-skylake-avx512.so"]["cpu_features"] == AVX512
    assert "cpu_features" not in written["lib/model.so"]
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_a_malformed_cpu_feature_list_is_an_integrity_error() -> None:
    from edgekiln.errors import IntegrityError

    with pytest.raises(IntegrityError, match="cpu_features"):
        _manifest(variant_features="avx512f")  # type: ignore[arg-type]
    with pytest.raises(IntegrityError, match="cpu_features"):
        _manifest(variant_features=[1, 2])  # type: ignore[list-item]

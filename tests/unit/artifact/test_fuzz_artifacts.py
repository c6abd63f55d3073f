"""Property-based tests: whatever bytes or JSON an artifact holds, reading it raises only
edgekiln's typed errors (no other exception, no hang, no unbounded memory), and a refused
artifact leaves nothing behind. Each test has a small, fixed budget for CI."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekiln.artifact import Manifest, UnpackLimits, check_member_path, read_manifest, unpack
from edgekiln.errors import EdgekilnError, IntegrityError
from tests.data.hostile import artifacts as hostile

BUDGET = settings(
    max_examples=60, deadline=2000, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
LIMITS = UnpackLimits(max_unpacked_bytes=1 << 20)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
FIELDS = [
    "schema_version",
    "model",
    "profile",
    "backend",
    "backend_options",
    "target_triple",
    "runtime",
    "inputs",
    "outputs",
    "files",
    "validation",
    "preprocessing",
    "labels",
    "quantization",
    "created_utc",
    "extra",
]
hostile_names = st.sampled_from(
    [
        "/etc/passwd",
        "/dev/zero",
        "../x",
        "a/../../x",
        "a//b",
        "./a",
        "a\\b",
        "",
        "manifest.json",
        "x" * 300,
        "lib/model.so",
        "labels.txt",
        "a\0b",
    ]
) | st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@BUDGET
@given(st.binary(max_size=2000))
def test_manifest_bytes_give_only_integrity_errors(data):
    try:
        Manifest.from_json(data)
    except IntegrityError:
        pass


@BUDGET
@given(st.sampled_from(FIELDS), json_values)
def test_one_field_of_any_json_type_gives_only_integrity_errors(field, value):
    data = hostile.manifest({"model.so": b"abc"})
    data[field] = value
    try:
        Manifest.from_dict(data)
    except IntegrityError:
        pass


@BUDGET
@given(hostile_names)
def test_the_path_check_accepts_only_plain_relative_paths(name):
    try:
        checked = check_member_path(name)
    except IntegrityError:
        return
    assert not checked.startswith("/") and ".." not in checked.split("/") and "\\" not in checked


members = st.lists(
    st.tuples(
        hostile_names,
        st.sampled_from(
            [tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE]
        ),
        st.binary(max_size=64),
    ),
    max_size=5,
)


@BUDGET
@given(
    members=members,
    listed=st.dictionaries(hostile_names, st.binary(max_size=64), max_size=4),
    manifest_first=st.booleans(),
)
def test_any_archive_unpacks_verified_or_is_refused_leaving_nothing(tmp_path, members, listed, manifest_first):
    entries = []
    for name, kind, data in members:
        info = tarfile.TarInfo(name.replace("\0", "") or "x")
        info.type = kind
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        info.linkname = "/etc/passwd" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
        entries.append((info, data if kind == tarfile.REGTYPE else None))
    manifest = hostile.manifest_member(hostile.manifest(listed))
    entries = [manifest, *entries] if manifest_first else [*entries, manifest]
    path = hostile.archive(tmp_path / "a.tar.gz", entries)
    out = tmp_path / "out"
    try:
        got = unpack(path, out, LIMITS)
    except EdgekilnError:
        assert not out.exists()
        return
    finally:
        (tmp_path / "a.tar.gz").unlink()
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == sorted([*(f.path for f in got.files), "manifest.json"])
    assert all(not p.is_symlink() for p in out.rglob("*"))
    import shutil

    shutil.rmtree(out)


@BUDGET
@given(position=st.integers(min_value=0), value=st.integers(min_value=0, max_value=255), cut=st.booleans())
def test_a_damaged_artifact_is_refused_or_still_verified(tmp_path, position, value, cut):
    files = {"model.so": b"\x7fELF" + bytes(range(256)) * 4, "labels.txt": b"cat\ndog\n"}
    path = hostile.plain(tmp_path / "a.tar.gz", files, labels="labels.txt")
    data = bytearray(path.read_bytes())
    position %= len(data)
    if cut:
        del data[position:]
    else:
        data[position] = value
    path.write_bytes(bytes(data))
    out = tmp_path / "out"
    try:
        read_manifest(path, LIMITS)
        manifest = unpack(path, out, LIMITS)
    except EdgekilnError:
        assert not out.exists()
        return
    # Whatever survived the damage matches the manifest byte for byte.
    assert {f.path: (out / f.path).read_bytes() for f in manifest.files} == files
    import shutil

    shutil.rmtree(out)


@BUDGET
@given(hostile_names, json_values)
def test_an_extracted_directory_with_any_manifest_gives_only_typed_errors(tmp_path, labels, value):
    from edgekiln.runtime.model import _verify_directory

    root = Path(tmp_path) / "artifact"
    root.mkdir(exist_ok=True)
    (root / "model.so").write_bytes(b"abc")
    data = hostile.manifest({"model.so": b"abc", str(labels): b""}, labels=labels, extra={"x": value})
    (root / "manifest.json").write_text(json.dumps(data))
    try:
        _verify_directory(root)
    except EdgekilnError:
        pass

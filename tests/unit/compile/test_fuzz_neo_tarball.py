"""Property-based test of the Neo tarball reader: any archive extracts inside its folder
or is refused with a UserError. A small, fixed budget for CI."""

from __future__ import annotations

import shutil
import tarfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekiln.compile.frontends import neo_tarball
from edgekiln.compile.frontends.neo_tarball import TarballLimits
from edgekiln.errors import UserError
from tests.data.hostile import artifacts as hostile

names = st.sampled_from(["/etc/x", "../x", "a/../../x", "model.onnx", "d/model.onnx", "d", "..", "."]) | st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1, max_size=20
)
kinds = st.sampled_from(
    [tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE]
)


@settings(max_examples=60, deadline=2000, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(
            names, kinds, st.sampled_from(["../../x", "/etc/passwd", "model.onnx", "d"]), st.binary(max_size=300)
        ),
        max_size=6,
    )
)
def test_any_tarball_extracts_inside_its_folder_or_is_refused(tmp_path, members):
    entries = []
    for name, kind, link, data in members:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = link if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        info.mode = 0o4755
        entries.append((info, data if kind == tarfile.REGTYPE else None))
    root = tmp_path / "case"
    shutil.rmtree(root, ignore_errors=True)
    dest = root / "a" / "b" / "dest"
    dest.mkdir(parents=True)
    path = hostile.archive(root / "m.tar.gz", entries)
    try:
        neo_tarball.extract(path, dest, TarballLimits(max_bytes=1000, max_members=5))
    except UserError:
        pass
    outside = sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if not str(p.relative_to(root)).startswith("a/b/dest")
    )
    assert outside == ["a", "a/b", "m.tar.gz"]
    assert sum(p.stat().st_size for p in dest.rglob("*") if p.is_file() and not p.is_symlink()) <= 1000

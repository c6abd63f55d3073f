"""Neo-style model tarballs: bounded in size and member count while they stream."""

from __future__ import annotations

import pytest

from edgekiln.compile.frontends import neo_tarball
from edgekiln.compile.frontends.neo_tarball import TarballLimits
from edgekiln.errors import UserError
from tests.data.hostile import artifacts as hostile


def test_a_member_claiming_3_gib_is_refused_before_it_is_written(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(UserError, match="unpacks to over 4294967296 bytes") as refused:
        neo_tarball.extract(hostile.neo_claimed(tmp_path / "m.tar.gz", size=5 << 30), tmp_path / "out")
    assert "EDGEKILN_MAX_MODEL_TARBALL_BYTES" in refused.value.one_line()
    with pytest.raises(UserError, match="over 1073741824 bytes"):
        neo_tarball.extract(
            hostile.neo_claimed(tmp_path / "n.tar.gz"), tmp_path / "out", TarballLimits(max_bytes=1 << 30)
        )
    assert list((tmp_path / "out").iterdir()) == []


def test_the_size_cap_comes_from_the_environment(tmp_path, monkeypatch):
    model = hostile.plain(tmp_path / "m.tar.gz", {"model.onnx": b"x" * 1000})
    monkeypatch.setenv("EDGEKILN_MAX_MODEL_TARBALL_BYTES", "1500")
    (tmp_path / "a").mkdir()
    with pytest.raises(UserError, match="over 1500 bytes"):  # the manifest member counts too
        neo_tarball.extract(model, tmp_path / "a")
    monkeypatch.setenv("EDGEKILN_MAX_MODEL_TARBALL_BYTES", "100000")
    (tmp_path / "b").mkdir()
    neo_tarball.extract(model, tmp_path / "b")
    assert (tmp_path / "b" / "model.onnx").read_bytes() == b"x" * 1000
    monkeypatch.setenv("EDGEKILN_MAX_MODEL_TARBALL_BYTES", "-1")
    with pytest.raises(UserError, match="not a positive number"):
        neo_tarball.extract(model, tmp_path / "b")


def test_too_many_members_and_sparse_members_are_refused(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(UserError, match="over 10000 members"):
        neo_tarball.extract(hostile.neo_many(tmp_path / "m.tar.gz"), tmp_path / "out")
    with pytest.raises(UserError, match="sparse member"):
        neo_tarball.extract(hostile.neo_sparse(tmp_path / "s.tar.gz"), tmp_path / "out")


def test_import_model_refuses_an_oversized_tarball_in_one_line(tmp_path):
    from edgekiln.compile.frontends import import_model

    with pytest.raises(UserError, match="unpacks to over"):
        import_model(hostile.neo_claimed(tmp_path / "m.tar.gz", size=5 << 30), tmp_path / "work")

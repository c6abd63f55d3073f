"""The evidence table and the TVM rule: which backends auto may build, in which order."""

from __future__ import annotations

import pytest

from edgekiln.compile import evidence
from edgekiln.compile.backends import registry
from edgekiln.compile.evidence import TuningCoverage, plan
from edgekiln.device_profiles import get_profile
from edgekiln.errors import InternalError, UserError


def test_every_shipped_row_names_its_figures_and_source():
    rows = evidence.rows()
    assert {r.key for r in rows} >= {
        "x86_64-cpu/fp32",
        "aarch64-cortex-a/fp32",
        "x86_64-cpu/int8",
        "aarch64-cortex-a/int8",
        "armv7l-cpu/fp32",
        "cuda-gpu/fp32",
    }
    for row in rows:
        assert row.figures and row.source and "PENDING" not in row.figures + row.source
        assert set(row.order) <= set(registry.names())


@pytest.mark.parametrize(
    ("target", "cls"),
    [
        ("x86_64", "x86_64-cpu"),
        ("c5", "x86_64-cpu"),
        ("rasp4b", "aarch64-cortex-a"),
        ("rasp5", "aarch64-cortex-a"),
        ("rasp3b", "armv7l-cpu"),
        ("h200", "cuda-gpu"),
        ("jetson_nano", "cuda-gpu"),
    ],
)
def test_profiles_map_to_their_target_class(target, cls):
    assert evidence.target_class(get_profile(target)) == cls


def test_x86_without_records_leaves_untuned_tvm_out():
    p = plan(get_profile("x86_64"), "fp32", ["tvm", "onnxruntime", "litert", "openvino"], None)
    assert p.order == ("openvino", "onnxruntime", "litert") and p.row.key == "x86_64-cpu/fp32"
    assert p.excluded["tvm"].startswith("untuned TVM is left out: the model has no tuning records")


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_rasp4b_prefers_litert_and_needs_records_for_tvm(precision):
    names = ["tvm", "onnxruntime", "litert"]
    p = plan(get_profile("rasp4b"), precision, names, None)
    assert p.order == ("litert", "onnxruntime") and p.row.key == f"aarch64-cortex-a/{precision}"
    # 89% of the FLOPs is not enough; 90% is.
    short = plan(get_profile("rasp4b"), precision, names, TuningCoverage(0.89, "db"))
    assert "tvm" in short.excluded and "records for 89% of its FLOPs" in short.excluded["tvm"]
    enough = plan(get_profile("rasp4b"), precision, names, TuningCoverage(0.90, "db"))
    assert enough.order == ("litert", "onnxruntime", "tvm") and not enough.excluded


def test_rasp3b_keeps_tvm_without_records():
    p = plan(get_profile("rasp3b"), "fp32", ["tvm", "litert"], None)
    assert p.order == ("tvm", "litert") and not p.excluded and p.row.key == "armv7l-cpu/fp32"


def test_cuda_without_a_gpu_takes_onnxruntime_not_untuned_tvm():
    p = plan(get_profile("h200"), "fp32", ["tvm", "onnxruntime"], None)
    assert p.order == ("onnxruntime",) and "tvm" in p.excluded and p.row.key == "cuda-gpu/fp32"
    # With no row (int8 on a GPU) the profile's order stands, and the TVM rule still holds.
    q = plan(get_profile("h200"), "int8", ["tvm", "onnxruntime"], None)
    assert q.row is None and q.order == ("onnxruntime",) and q.order_source == "the profile's order"


def test_an_amd_host_that_times_the_candidates_follows_the_amd_row():
    names = ["tvm", "onnxruntime", "litert", "openvino"]
    amd = plan(get_profile("x86_64"), "fp32", names, None, host_vendor="amd")
    assert amd.row.key == "x86_64-cpu/fp32/amd" and amd.order == ("onnxruntime", "litert", "openvino")
    assert amd.order_source == "evidence row x86_64-cpu/fp32/amd's order" and "tvm" in amd.excluded
    # Intel hosts, unknown vendors and targets this host cannot time take the row for every host;
    # so does a precision without a vendor row.
    for vendor in ("intel", ""):
        assert plan(get_profile("x86_64"), "fp32", names, None, host_vendor=vendor).row.key == "x86_64-cpu/fp32"
    assert plan(get_profile("x86_64"), "int8", names, None, host_vendor="amd").row.key == "x86_64-cpu/int8"
    # A vendor row never stands in for a missing row of another class.
    assert evidence.lookup(get_profile("rasp4b"), "fp32", host_vendor="amd").key == "aarch64-cortex-a/fp32"


def test_tvm_alone_is_kept_whatever_the_records():
    p = plan(get_profile("x86_64"), "fp32", ["tvm"], None)
    assert p.order == ("tvm",) and not p.excluded


def test_coverage_and_table_errors():
    with pytest.raises(UserError, match=r"share of FLOPs in \[0, 1\]"):
        TuningCoverage(1.5)
    with pytest.raises(InternalError, match="expected"):
        evidence.parse({"row": [{"target_class": "x86_64-cpu"}]})
    row = {
        "target_class": "x86_64-cpu",
        "precision": "fp32",
        "order": ["tvm"],
        "tvm_needs_records": True,
        "figures": "f",
        "source": "s",
    }
    with pytest.raises(InternalError, match="repeat"):
        evidence.parse({"row": [row, row]})
    with pytest.raises(InternalError, match="unknown class"):
        evidence.parse({"row": [{**row, "precision": "fp16"}]})
    with pytest.raises(InternalError, match="unknown cpu_vendor 'via'"):
        evidence.parse({"row": [{**row, "cpu_vendor": "via"}]})
    with pytest.raises(InternalError, match="repeat"):
        evidence.parse({"row": [{**row, "cpu_vendor": "amd"}, {**row, "cpu_vendor": "amd"}]})
    both = evidence.parse({"row": [row, {**row, "cpu_vendor": "amd", "order": ["onnxruntime"]}]})
    assert [r.key for r in both] == ["x86_64-cpu/fp32", "x86_64-cpu/fp32/amd"]

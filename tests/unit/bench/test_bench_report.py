"""Reports: the JSON round trip, Markdown, and plots that are real PNG files."""

from __future__ import annotations

import json
import struct
import zlib

import matplotlib  # noqa: F401 - an installed extra: missing must fail, not skip
import pytest

from edgekiln.bench import report
from edgekiln.bench.results import SCHEMA, BenchReport, Skipped
from edgekiln.errors import UserError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_valid_png(path, min_width=300, min_height=150):
    """Signature, an IHDR chunk with a sane size and a good CRC, image data, IEND; and Pillow decodes it."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    assert width >= min_width and height >= min_height
    (crc,) = struct.unpack(">I", data[16 + length : 20 + length])
    assert crc == zlib.crc32(data[12 : 16 + length])
    assert b"IDAT" in data and data.endswith(b"IEND\xaeB`\x82")
    from PIL import Image

    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        image.load()
        assert image.size == (width, height)
        # Not a blank canvas: a plot has many colours.
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 10


def test_report_round_trips_through_json(tmp_path, make_bench, make_report):
    original = make_report(
        make_bench(),
        make_bench(model="resnet18", precision="int8", top1=0.98),
        skipped=[Skipped("x/y", "skipped", "no GPU")],
    )
    path = original.save(tmp_path / "sub" / "results.json")
    data = json.loads(path.read_text())
    assert data["schema"] == SCHEMA
    loaded = BenchReport.load(path)
    assert loaded == original
    assert loaded.results[0].comparison("onnxruntime").speedup == pytest.approx(
        1 / loaded.results[0].comparisons[0].ratio.median
    )


def test_foreign_or_broken_reports_are_user_errors(tmp_path):
    (tmp_path / "a.json").write_text('{"schema": "something-else/9"}')
    (tmp_path / "b.json").write_text("not json")
    for name in ("a.json", "b.json", "missing.json"):
        with pytest.raises(UserError):
            BenchReport.load(tmp_path / name)


def test_plots_are_valid_png_files(tmp_path, make_bench, make_report):
    data = make_report(
        make_bench(),
        make_bench(model="resnet18", cand_ms=(1600.0, 1650.0, 1700.0), base_ms=(25.0, 26.0, 24.0)),
        make_bench(model="mobilenet_v3_small", precision="int8", top1=0.95),
        make_bench(model="emulated", meaningful=False),
    )
    paths = report.write_plots(data, tmp_path / "plots")
    assert [p.name for p in paths] == list(report.PLOTS)
    for path in paths:
        assert_valid_png(path)


def test_plots_of_an_empty_run_are_still_valid(tmp_path, make_report):
    for path in report.write_plots(make_report(), tmp_path):
        assert_valid_png(path)


def test_markdown_names_every_figure(make_bench, make_report):
    data = make_report(
        make_bench(),
        skipped=[
            Skipped("resnet18/nvidia/h200-sxm/tvm/fp32/cuda/single-stream/b1", "skipped", "no NVIDIA GPU is attached")
        ],
    )
    text = report.markdown(data, title="T", plots=report.PLOTS)
    assert text.startswith("# T\n")
    row = next(line for line in text.splitlines() if line.startswith("| mobilenet_v2 |") and "**tvm**" in line)
    assert "| 110.0 |" in row  # p50 of 100, 105, 110, 115, 120
    assert "tvm / onnxruntime | 5 | 10.000" in text  # every pair's ratio is 10
    assert "no NVIDIA GPU is attached" in text
    assert "![latency](latency.png)" in text
    assert "Load average" in text and "[1.0, 1.0, 1.0]" in text


def test_every_plot_has_linear_axes_that_start_at_zero(tmp_path, make_bench, make_report, monkeypatch):
    axes = {}
    save = report._save

    def record(fig, plt, path):
        ax = fig.axes[0]
        axes[path.name] = (ax.get_xscale(), ax.get_yscale(), ax.get_xlim(), ax.get_ylim())
        return save(fig, plt, path)

    monkeypatch.setattr(report, "_save", record)
    data = make_report(
        make_bench(),
        make_bench(model="resnet18", cand_ms=(1600.0, 1650.0, 1700.0), base_ms=(25.0, 26.0, 24.0)),
    )
    report.write_plots(data, tmp_path)
    assert set(axes) == set(report.PLOTS)
    for name, (xscale, yscale, xlim, _ylim) in axes.items():
        assert (xscale, yscale) == ("linear", "linear"), name
        assert xlim[0] == 0.0, name
    # The slowest p99 (1700 ms) is inside the latency plot, the largest ratio (about 68) in the ratios'.
    assert axes["latency.png"][2][1] >= 1700.0
    assert axes["ratios.png"][2][1] >= 1700.0 / 25.0
    assert axes["accuracy_latency.png"][3] == (0.0, 1.25)

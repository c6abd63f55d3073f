"""Reports of a benchmark run: Markdown tables and PNG plots (matplotlib, Agg backend).

- ``latency.png``: per measured artifact, each runtime's p50 latency as a bar with a whisker
  from the fastest query to p99, its figure written beside it;
- ``ratios.png``: every interleaved pair's time ratio candidate / baseline, per comparison,
  with the median and its 95% confidence interval — the spread the summary figures condense;
- ``accuracy_latency.png``: top-1 agreement with the fp32 reference against p50 latency,
  int8 artifacts highlighted (the trade an int8 build makes).

Every axis is linear and starts at zero: a bar's length is then its figure, and a ratio of
two lengths is the ratio of two times (a log axis makes 100x look like 2x). What is too
short to see carries its number.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from edgekiln.bench.results import ArtifactBench, BenchReport
from edgekiln.errors import DependencyError

PLOTS = ("latency.png", "ratios.png", "accuracy_latency.png")


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise DependencyError(
            "plots need matplotlib, which is not installed", hint="pip install 'edgekiln[bench]'"
        ) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _label(r: ArtifactBench) -> str:
    batch = f" b{r.batch}" if r.batch != 1 else ""
    return f"{r.model} {r.precision}{batch} [{r.backend}, {r.profile.split('/')[-1]}]"


def plot_latency(report: BenchReport, path: str | os.PathLike[str]) -> Path:
    """One horizontal bar per runtime and artifact: p50, with a whisker from min to p99."""
    plt = _pyplot()
    measured = [r for r in report.results if r.timings_meaningful and r.candidate.latency]
    names = list(dict.fromkeys(s.name for r in measured for s in r.subjects if s.latency))
    colors = plt.get_cmap("tab10")
    rows: list[tuple[str, Any, bool]] = []
    for r in measured:
        for s in r.subjects:
            if s.latency:
                rows.append((f"{_label(r)}  {s.name}", s, s.role == "candidate"))
        rows.append(("", None, False))  # a gap between artifacts
    rows = rows[:-1]
    fig, ax = plt.subplots(figsize=(9.0, 1.6 + 0.26 * max(1, len(rows))))
    for y, (_, s, candidate) in enumerate(rows):
        if s is None:
            continue
        lat = s.latency
        ax.barh(
            y,
            lat.p50_ms,
            height=0.8,
            color=colors(names.index(s.name) % 10),
            hatch="//" if candidate else None,
            edgecolor="black" if candidate else "none",
            linewidth=0.6,
        )
        ax.errorbar(
            lat.p50_ms,
            y,
            xerr=[[lat.p50_ms - lat.min_ms], [lat.p99_ms - lat.p50_ms]],
            fmt="none",
            ecolor="black",
            capsize=2,
            linewidth=0.8,
        )
        ax.annotate(
            f"{lat.p50_ms:.{1 if lat.p50_ms < 100 else 0}f} ms",
            (lat.p99_ms, y),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=6,
        )
    ax.set_yticks(range(len(rows)), [label for label, _, _ in rows], fontsize=7)
    ax.invert_yaxis()
    _from_zero(ax)
    ax.set_xlabel("latency per query, ms")
    ax.set_title("Latency per runtime: bar p50, whisker min to p99 (hatched: the artifact)", fontsize=10)
    if not measured:
        ax.text(0.5, 0.5, "no timed results (emulated or skipped only)", ha="center", transform=ax.transAxes)
    ax.grid(axis="x", which="both", alpha=0.3)
    return _save(fig, plt, path)


def plot_ratios(report: BenchReport, path: str | os.PathLike[str]) -> Path:
    """Every pair's ratio candidate / baseline per comparison, with the medians."""
    plt = _pyplot()
    rows = []
    for r in report.results:
        cand = r.candidate
        for c in r.comparisons:
            base = r.subject(c.baseline)
            if base and cand.pair_ms and len(base.pair_ms) == len(cand.pair_ms):
                ratios = [a / b for a, b in zip(cand.pair_ms, base.pair_ms) if b > 0]
                rows.append((f"{_label(r)}  {cand.name} / {c.baseline}", ratios, c.ratio))
    fig, ax = plt.subplots(figsize=(9.0, 1.6 + 0.3 * max(1, len(rows))))
    for y, (_, ratios, q) in enumerate(rows):
        jitter = [y + ((k % 5) - 2) * 0.08 for k in range(len(ratios))]
        ax.scatter(ratios, jitter, s=10, alpha=0.7, color="tab:blue")
        ax.vlines(q.median, y - 0.35, y + 0.35, colors="black", linewidth=2)
        ax.hlines(y, q.ci95_low, q.ci95_high, colors="gray", linewidth=1)
        right = max([q.ci95_high, *ratios])
        ax.annotate(f"{q.median:.2f}x", (right, y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=6)
    ax.axvline(1.0, color="tab:red", linewidth=0.8, alpha=0.6)
    ax.set_yticks(range(len(rows)), [label for label, _, _ in rows], fontsize=7)
    ax.invert_yaxis()
    _from_zero(ax)
    ax.set_xlabel("candidate time / baseline time per pair (above 1: the baseline is faster)")
    ax.set_title("Per-pair ratios of interleaved queries (bar: median, line: its 95% CI)", fontsize=10)
    if not rows:
        ax.text(0.5, 0.5, "no comparisons in this run", ha="center", transform=ax.transAxes)
    ax.grid(axis="x", which="both", alpha=0.3)
    return _save(fig, plt, path)


def plot_accuracy_latency(report: BenchReport, path: str | os.PathLike[str]) -> Path:
    """Top-1 agreement with the fp32 reference against p50 latency; int8 highlighted."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    points = [
        (r, r.candidate.latency.p50_ms, r.correctness.top1_agreement)
        for r in report.results
        if r.correctness and r.candidate.latency
    ]
    for precision, marker, color in (("fp32", "o", "tab:blue"), ("fp16", "s", "tab:green"), ("int8", "*", "tab:red")):
        chosen = [(lat, acc, r) for r, lat, acc in points if r.precision == precision]
        if chosen:
            ax.scatter(
                [c[0] for c in chosen],
                [c[1] for c in chosen],
                marker=marker,
                s=90 if precision == "int8" else 50,
                color=color,
                label=precision,
                zorder=3,
            )
            # Staggered upwards: on a linear axis the fast artifacts sit close together.
            for i, (lat, acc, r) in enumerate(sorted(chosen, key=lambda c: c[0])):
                ax.annotate(
                    f"{r.model} ({r.backend})",
                    (lat, acc),
                    fontsize=7,
                    xytext=(4, 4 + 9 * (i % 6)),
                    textcoords="offset points",
                )
    # The fp32 reference runtime sits at agreement 1 by definition: the point to beat.
    refs = {}
    for r in report.results:
        if r.correctness:
            ref = next(
                (
                    s
                    for s in r.subjects
                    if s.role == "baseline" and s.latency and r.correctness.reference.startswith(s.name)
                ),
                None,
            )
            if ref is not None:
                refs[(r.model, ref.name)] = ref.latency.p50_ms
    if refs:
        ax.scatter(list(refs.values()), [1.0] * len(refs), marker="x", color="gray", s=50, label="reference", zorder=2)
        # Staggered below the points: references of several models often sit close together.
        for i, ((model, name), lat) in enumerate(sorted(refs.items(), key=lambda kv: kv[1])):
            ax.annotate(
                f"{model} ({name})",
                (lat, 1.0),
                fontsize=7,
                xytext=(4, -12 - 10 * (i % 4)),
                textcoords="offset points",
                color="gray",
            )
    if not any(r.precision == "int8" for r, _, _ in points):
        ax.text(
            0.5, 0.08, "no int8 artifacts in this run", ha="center", transform=ax.transAxes, fontsize=9, color="tab:red"
        )
    _from_zero(ax)
    ax.set_ylim(0.0, 1.25)  # room above 1.0 for the staggered labels; agreement ends at 1
    ax.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_xlabel("p50 latency, ms")
    ax.set_ylabel("top-1 agreement with fp32 reference")
    ax.set_title("Accuracy against latency")
    if points:
        ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, plt, path)


def _from_zero(ax: Any) -> None:
    """A linear x axis from zero to a little beyond the largest figure drawn."""
    ax.set_xscale("linear")
    ax.set_xlim(left=0.0, right=max(ax.get_xlim()[1], 1e-9) * 1.08)


def _save(fig: Any, plt: Any, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    # Fixed metadata: the same figures give the same bytes, which keeps committed PNGs' diffs honest.
    fig.savefig(path, format="png", dpi=110, metadata={"Software": None}, bbox_inches="tight")
    plt.close(fig)
    return path


def write_plots(report: BenchReport, directory: str | os.PathLike[str]) -> list[Path]:
    """All three plots into ``directory``; returns their paths."""
    directory = Path(directory)
    return [
        plot_latency(report, directory / PLOTS[0]),
        plot_ratios(report, directory / PLOTS[1]),
        plot_accuracy_latency(report, directory / PLOTS[2]),
    ]


# -- Markdown ----------------------------------------------------------------------------
def _f(value: float | None, fmt: str = ".1f") -> str:
    return "–" if value is None else format(value, fmt)


def markdown(
    report: BenchReport,
    *,
    title: str = "Benchmark report",
    plots: Sequence[str] = (),
    gate: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
) -> str:
    """The report as Markdown: host and load, one table per artifact, ratios, skips, gate."""
    lines = _md_header(report, title, notes)
    lines += _md_timings(report)
    lines += _md_ratios(report)
    lines += _md_correctness(report)
    not_timed = [r for r in report.results if not r.timings_meaningful]
    if not_timed:
        lines += ["", "Timings not meaningful (correctness only):", ""]
        lines += [f"- {r.key}: {r.timings_note}" for r in not_timed]
    if report.skipped:
        lines += ["", "## Not benchmarked", ""]
        lines += [f"- `{s.key}` — {s.status}: {s.reason}" for s in report.skipped]
    if gate is not None:
        lines += _md_gate(gate)
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    lines += [
        "",
        "Definitions: a query is one call of the model (single-stream) or `batch` samples (offline), "
        "timed from host arrays in to host arrays out; percentiles are nearest-rank (an observed query); "
        "GFLOP/s counts 2 FLOPs per multiply-accumulate of the model graph at p50; % of peak is against "
        "the profile's peak FP32 figure; peak RSS is that of the process that ran the model "
        "(Python interpreter included).",
    ]
    return "\n".join(lines) + "\n"


def _md_header(report: BenchReport, title: str, notes: Sequence[str]) -> list[str]:
    """Title, command, host and load, the measurement settings and the caller's notes."""
    host = report.host
    lines = [f"# {title}", ""]
    if report.command:
        lines += [f"Command: `{report.command}`", ""]
    lines += [
        f"Measured {report.created_utc} with edgekiln {report.edgekiln_version} on {host.get('cpu')} "
        f"({host.get('cores')} cores, {host.get('system', '')}, Python {host.get('python')}). "
        f"Load average (1, 5, 15 min) {host.get('loadavg_before')} before and {host.get('loadavg_after')} after: "
        "the machine is shared, so absolute times move with its load; the ratios of interleaved "
        "pairs are the figures to compare.",
        "",
    ]
    opts = report.options
    keys = ("runs", "warmup", "scenario", "device", "threads")
    settings = [f"{k} {opts[k]}" for k in keys if opts.get(k) is not None]
    if "baselines" in opts:
        settings.append("baselines " + ", ".join(opts["baselines"]))
    if settings:
        lines += ["Settings: " + "; ".join(settings) + ".", ""]
    lines += [f"{n}" for n in notes] + ([""] if notes else [])
    return lines


def _md_timings(report: BenchReport) -> list[str]:
    """One row per timed runtime (candidate in bold) of every artifact."""
    lines = [
        "| model | profile | backend | precision | scenario | batch | runtime | load s | first ms | p50 ms | p90 ms "
        "| p99 ms | mean ms | samples/s | GFLOP/s | % of peak | peak RSS MB |",
        "|---|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report.results:
        for s in r.subjects:
            lat = s.latency
            share = s.peak_share * 100 if s.peak_share is not None else None
            lines.append(
                f"| {r.model} | {r.profile} | {r.backend} | {r.precision} | {r.scenario} | {r.batch} | "
                f"{'**' + s.name + '**' if s.role == 'candidate' else s.name} | {_f(s.load_s, '.2f')} | "
                f"{_f(s.first_inference_ms)} | {_f(lat and lat.p50_ms)} | {_f(lat and lat.p90_ms)} | "
                f"{_f(lat and lat.p99_ms)} | {_f(lat and lat.mean_ms)} | {_f(s.throughput_samples_per_s, '.2f')} | "
                f"{_f(s.achieved_gflops)} | {_f(share)} | {_f(s.peak_rss_mb, '.0f')} |"
            )
    return lines


def _md_ratios(report: BenchReport) -> list[str]:
    """The interleaved pairs' ratio statistics; nothing when no baseline was timed."""
    comparisons = [(r, c) for r in report.results for c in r.comparisons]
    if not comparisons:
        return []
    lines = [
        "",
        "## Ratios of interleaved pairs (candidate time / baseline time; above 1: the baseline is faster)",
        "",
        "| model | precision | scenario | candidate / baseline | pairs | median | 95% CI of median | p10–p90 "
        "| spread | geomean |",
        "|---|---|---|---|---:|---:|---|---|---:|---:|",
    ]
    for r, c in comparisons:
        q = c.ratio
        lines.append(
            f"| {r.model} | {r.precision} | {r.scenario} | {r.candidate.name} / {c.baseline} | {q.n} | "
            f"{q.median:.3f} | {q.ci95_low:.3f}–{q.ci95_high:.3f} | {q.p10:.3f}–{q.p90:.3f} | "
            f"{q.spread:.0%} | {q.geomean:.3f} |"
        )
    return lines


def _md_correctness(report: BenchReport) -> list[str]:
    lines = [
        "",
        "## Correctness and cost",
        "",
        "| model | backend | precision | runner | outputs against | max abs diff | top-1 agreement | artifact MB "
        "| GFLOP per sample | profile peak GFLOP/s |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in report.results:
        k = r.correctness
        lines.append(
            f"| {r.model} | {r.backend} | {r.precision} | {r.runner_description} | "
            f"{k.reference if k else (r.correctness_note or '–')} | "
            f"{f'{k.max_abs_diff:.2e}' if k else '–'} | {f'{k.top1_agreement:.2f}' if k else '–'} | "
            f"{r.artifact_bytes / 1e6:.1f} | {_f(r.flops_per_sample / 1e9 if r.flops_per_sample else None, '.2f')} | "
            f"{_f(r.peak_gflops, '.0f')} |"
        )
    return lines


def _md_gate(gate: Mapping[str, Any]) -> list[str]:
    lines = [
        "",
        "## Regression gate",
        "",
        f"Against `{gate.get('baseline')}`: "
        + ("**passed**" if gate["passed"] else f"**failed** ({len(gate['regressions'])} regressions)"),
        "",
    ]
    lines += [f"- REGRESSED {f['key']} {f['metric']}: {f['message']}" for f in gate["regressions"]]
    lines += [f"- ok {f['key']} {f['metric']}: {f['message']}" for f in gate["checked"] if not f["regressed"]]
    lines += [f"- not compared: {m}" for m in gate.get("not_compared", ())]
    return lines

"""``edgekiln bench``: time artifacts against baseline runtimes, interleaved, in one run."""

from __future__ import annotations

import argparse
import shlex
import sys

HELP = "benchmark artifacts against ONNX Runtime, OpenVINO or PyTorch on the same inputs"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help=HELP,
        description=(
            "Benchmark each ARTIFACT through the device runtime, with its source model in a baseline "
            "runtime beside it: each in its own process, queries interleaved (A B A B ...) so that every "
            "pair of queries shares the machine's conditions. Reports load and first-inference time, "
            "latency percentiles (single-stream) or throughput (offline), achieved GFLOP/s against the "
            "profile's peak, each process's peak RSS, per-pair ratios to each baseline with their spread, "
            "and the outputs' agreement with the reference. Artifacts for another CPU run on their "
            "emulated board for correctness only (timings are marked as not meaningful)."
        ),
    )
    parser.add_argument("artifacts", metavar="ARTIFACT", nargs="+", help="artifact .tar.gz or extracted directory")
    parser.add_argument(
        "--baseline",
        action="append",
        metavar="NAME",
        help="onnxruntime (default), openvino, torch, torch-compile or none; "
        "repeat or separate with commas for several",
    )
    parser.add_argument(
        "--baseline-model",
        metavar="PATH",
        help="the model file, folder or tarball the artifact was compiled from, of any framework "
        "compile takes (needed for non-zoo models)",
    )
    parser.add_argument(
        "--scenario",
        default="single-stream",
        choices=("single-stream", "offline"),
        help="single-stream: latency of one query at a time; offline: throughput of "
        "queries of --batch samples (default: single-stream)",
    )
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument(
        "--runs",
        type=int,
        metavar="N",
        help="measured pairs; each half runs one query or, for a fast model, as many as fill 50 ms",
    )
    amount.add_argument(
        "--duration", type=float, metavar="S", help="measure for S seconds, at least 3 pairs (default: 10 s)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        metavar="N",
        help="warm-up queries per runtime after the first inference (default: 1)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        metavar="N",
        help="samples per query (offline; default 8, or the artifact's batch if larger)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads of every runtime alike (default: each runtime's own choice)",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda for CUDA artifacts, else cpu")
    parser.add_argument("--agent", metavar="ADDRESS", help="run the artifact on a device through its agent")
    parser.add_argument("--json", metavar="OUT", help="write the report as JSON to OUT (- for stdout)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgekiln.bench.harness import BenchOptions, bench
    from edgekiln.execute.progress import ConsoleProgress

    names = [n.strip() for value in (args.baseline or ["onnxruntime"]) for n in value.split(",") if n.strip()]
    options = BenchOptions(
        scenario=args.scenario,
        runs=args.runs,
        duration_s=args.duration,
        warmup=args.warmup,
        batch=args.batch,
        baselines=tuple(names),
        baseline_model=args.baseline_model,
        device=args.device,
        agent=args.agent,
        threads=args.threads,
    )
    command = "edgekiln bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 else None
    connect = None
    if args.agent:
        from edgekiln.agents.bench_client import connect
    report = bench(args.artifacts, options, progress=ConsoleProgress(), command=command, connect=connect)
    to_stdout = args.json == "-"
    if args.json and not to_stdout:
        report.save(args.json)
    if to_stdout:
        sys.stdout.write(report.to_json())
    else:
        print(summary(report))
        if args.json:
            print(f"report written to {args.json}")
    return 0


def summary(report) -> str:
    """The report as a few aligned lines per artifact."""
    lines = []
    for r in report.results:
        lines.append(
            f"{r.model} · {r.profile} · {r.backend} {r.precision} · {r.device} · {r.scenario} "
            f"(batch {r.batch}) · {r.pairs} pairs · {r.runner_description}"
        )
        if not r.timings_meaningful:
            lines.append(f"  timings not meaningful: {r.timings_note}")
        for name, why in r.baselines_failed.items():
            lines.append(f"  baseline {name} not run: {why}")
        width = max(14, *(len(s.name) + 2 for s in r.subjects))
        lines.append(
            f"  {'runtime':<{width}}{'load s':>8}{'first ms':>10}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}"
            f"{'mean ms':>10}{'min ms':>10}{'max ms':>10}{'samples/s':>11}{'GFLOP/s':>9}{'%peak':>7}"
            f"{'RSS MB':>8}"
        )
        for s in r.subjects:
            lat = s.latency

            def cell(value, fmt, width):
                return f"{value:{width}{fmt}}" if value is not None else f"{'-':>{width}}"

            lines.append(
                f"  {s.name:<{width}}{cell(s.load_s, '.2f', 8)}{cell(s.first_inference_ms, '.1f', 10)}"
                f"{cell(lat and lat.p50_ms, '.1f', 10)}{cell(lat and lat.p90_ms, '.1f', 10)}"
                f"{cell(lat and lat.p99_ms, '.1f', 10)}{cell(lat and lat.mean_ms, '.1f', 10)}"
                f"{cell(lat and lat.min_ms, '.1f', 10)}{cell(lat and lat.max_ms, '.1f', 10)}"
                f"{cell(s.throughput_samples_per_s, '.2f', 11)}{cell(s.achieved_gflops, '.1f', 9)}"
                f"{cell(s.peak_share * 100 if s.peak_share is not None else None, '.1f', 7)}"
                f"{cell(s.peak_rss_mb, '.0f', 8)}"
            )
        for c in r.comparisons:
            q = c.ratio
            name = r.candidate.name
            faster = (
                f"{name} is {c.speedup:.2f}x as fast"
                if c.speedup >= 1
                else f"{c.baseline} is {1 / c.speedup:.2f}x as fast"
            )
            lines.append(
                f"  {name}/{c.baseline} time ratio: median {q.median:.3f} over {q.n} pairs "
                f"(95% CI {q.ci95_low:.3f}-{q.ci95_high:.3f}, p10-p90 {q.p10:.3f}-{q.p90:.3f}, "
                f"spread {q.spread:.0%}): {faster}"
            )
        if r.correctness:
            k = r.correctness
            lines.append(
                f"  outputs against {k.reference}: max abs diff {k.max_abs_diff:.2e}, "
                f"top-1 agreement {k.top1_agreement:.2f} over {k.samples} samples"
            )
        elif r.correctness_note:
            lines.append(f"  outputs not compared: {r.correctness_note}")
        flops = f"{r.flops_per_sample / 1e9:.2f} GFLOP per sample" if r.flops_per_sample else "FLOPs unknown"
        peak = f", profile peak {r.peak_gflops:.0f} GFLOP/s" if r.peak_gflops else ""
        lines.append(f"  artifact {r.artifact_bytes / 1e6:.1f} MB; {flops}{peak}")
    host = report.host
    lines.append(
        f"host: {host.get('cpu')}, {host.get('cores')} cores; load average "
        f"{host.get('loadavg_before')} before, {host.get('loadavg_after')} after"
    )
    return "\n".join(lines)

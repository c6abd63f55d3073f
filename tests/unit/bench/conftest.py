"""Benchmark reports built in code, with known figures, for the gate and report tests."""

from __future__ import annotations

import pytest

from edgekiln.bench.results import ArtifactBench, BenchReport, Comparison, Correctness, SubjectResult
from edgekiln.execute.statistics import LatencyStats, RatioStats


def artifact_bench(
    model: str = "mobilenet_v2",
    cand_ms=(100.0, 110.0, 120.0, 105.0, 115.0),
    base_ms=(10.0, 11.0, 12.0, 10.5, 11.5),
    precision: str = "fp32",
    scenario: str = "single-stream",
    batch: int = 1,
    top1: float = 1.0,
    diff: float = 1e-5,
    meaningful: bool = True,
) -> ArtifactBench:
    def subject(name, role, times):
        lat = LatencyStats.from_seconds([t / 1e3 for t in times]) if meaningful else None
        return SubjectResult(
            name=name,
            role=role,
            version=f"{name} 1.0",
            load_s=0.5,
            first_inference_ms=times[0] * 2,
            latency=lat,
            throughput_samples_per_s=batch * len(times) / (sum(times) / 1e3) if meaningful else None,
            achieved_gflops=0.6 / (lat.p50_ms / 1e3) if lat else None,
            peak_share=None,
            peak_rss_mb=300.0 if role == "candidate" else 150.0,
            rss_before_load_mb=35.0,
            model_bytes=14_000_000,
            times_ms=tuple(times) if meaningful else (),
            pair_ms=tuple(times) if meaningful else (),
        )

    subjects = (subject("tvm", "candidate", cand_ms), subject("onnxruntime", "baseline", base_ms))
    comparisons = (Comparison("onnxruntime", RatioStats.from_pairs(cand_ms, base_ms)),) if meaningful else ()
    return ArtifactBench(
        model=model,
        profile="generic/x86-64-avx2",
        backend="tvm",
        precision=precision,
        device="cpu",
        scenario=scenario,
        batch=batch,
        calls_per_query=1,
        artifact=f"{model}.tar.gz",
        artifact_bytes=14_600_000,
        runner="local" if meaningful else "emulated",
        runner_description="local process on this host",
        timings_meaningful=meaningful,
        timings_note=None if meaningful else "emulated",
        macs=300_774_272,
        flops_per_sample=601_548_544.0,
        peak_gflops=384.0,
        peak_source="test",
        pairs=len(cand_ms),
        warmup=1,
        subjects=subjects,
        comparisons=comparisons,
        correctness=Correctness("onnxruntime 1.0", 3, diff, top1),
        correctness_note=None,
        baseline_source="zoo:mobilenet_v2 (matched by sha256)",
        wall_s=3.0,
    )


def bench_report(*results: ArtifactBench, skipped=()) -> BenchReport:
    return BenchReport(
        created_utc="2026-01-01T00:00:00+00:00",
        edgekiln_version="0.1.0",
        host={"cpu": "test", "cores": 2, "loadavg_before": [1.0, 1.0, 1.0], "loadavg_after": [1.0, 1.0, 1.0]},
        options={"runs": 5},
        results=tuple(results),
        skipped=tuple(skipped),
    )


@pytest.fixture
def make_bench():
    return artifact_bench


@pytest.fixture
def make_report():
    return bench_report

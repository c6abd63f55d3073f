"""Statistics of benchmark samples on samples whose answers are known by hand."""

from __future__ import annotations

import math

import pytest

from edgekiln.errors import InternalError, UserError
from edgekiln.execute.statistics import LatencyStats, RatioStats, median_ci95, percentile


def test_nearest_rank_percentiles_of_the_textbook_example():
    # The nearest-rank example of the percentile literature: 15, 20, 35, 40, 50.
    data = [50, 15, 40, 20, 35]
    assert percentile(data, 5) == 15
    assert percentile(data, 30) == 20
    assert percentile(data, 40) == 20
    assert percentile(data, 50) == 35
    assert percentile(data, 100) == 50


def test_percentiles_are_observed_samples():
    data = list(range(1, 101))  # 1..100
    assert percentile(data, 50) == 50
    assert percentile(data, 90) == 90
    assert percentile(data, 99) == 99
    # With ten samples p99 is the maximum: nothing finer was observed.
    assert percentile(list(range(1, 11)), 99) == 10
    assert percentile(list(range(1, 11)), 90) == 9


@pytest.mark.parametrize("bad", [0, -1, 101])
def test_percentile_rejects_out_of_range(bad):
    with pytest.raises(UserError):
        percentile([1.0], bad)
    with pytest.raises(UserError):
        percentile([], 50)


def test_latency_stats_in_milliseconds():
    stats = LatencyStats.from_seconds([0.040, 0.010, 0.030, 0.020])
    assert stats.n == 4
    assert stats.mean_ms == pytest.approx(25.0)
    assert stats.stdev_ms == pytest.approx(math.sqrt(500 / 3))  # sample stdev of 10, 20, 30, 40
    assert (stats.min_ms, stats.p50_ms, stats.p90_ms, stats.p99_ms, stats.max_ms) == pytest.approx(
        (10.0, 20.0, 40.0, 40.0, 40.0)
    )
    assert LatencyStats.from_dict(stats.to_dict()) == stats


def test_latency_stats_of_one_sample_and_of_none():
    one = LatencyStats.from_seconds([0.5])
    assert one.stdev_ms == 0.0 and one.p50_ms == one.p99_ms == 500.0
    with pytest.raises(UserError):
        LatencyStats.from_seconds([])


def test_ratio_of_pairs_with_a_constant_ratio_has_no_spread():
    stats = RatioStats.from_pairs([2, 4, 6, 8, 10], [1, 2, 3, 4, 5])
    assert stats.median == stats.geomean == pytest.approx(2.0)
    assert stats.spread == 0.0
    assert stats.n == 5


def test_ratio_median_geomean_and_spread():
    stats = RatioStats.from_ratios([1.0, 4.0, 2.0])
    assert stats.median == 2.0
    assert stats.geomean == pytest.approx(2.0)  # (1 * 2 * 4) ** (1/3)
    assert (stats.p10, stats.p90) == (1.0, 4.0)
    assert stats.spread == pytest.approx((4.0 - 1.0) / 2.0)
    even = RatioStats.from_ratios([1.0, 2.0, 3.0, 10.0])
    assert even.median == 2.5


def test_ratio_spread_ignores_the_outer_tenth():
    # 20 pairs: 18 at ratio 2, one disturbed pair each way; p10..p90 stays at 2.
    ratios = [2.0] * 18 + [0.5, 8.0]
    stats = RatioStats.from_ratios(ratios)
    assert stats.median == 2.0
    assert stats.p10 == stats.p90 == 2.0 and stats.spread == 0.0
    assert (stats.min, stats.max) == (0.5, 8.0)


def test_median_confidence_interval_from_order_statistics():
    data = [float(i) for i in range(1, 101)]
    assert median_ci95(data) == (40.0, 61.0)  # the ranks of the binomial table for n = 100
    assert median_ci95([3.0, 1.0, 2.0]) == (1.0, 3.0)  # too few pairs: the whole range
    stats = RatioStats.from_ratios(data)
    assert stats.ci95_low <= stats.median <= stats.ci95_high


def test_ratio_inputs_are_checked():
    with pytest.raises(InternalError):
        RatioStats.from_pairs([1.0, 2.0], [1.0])
    with pytest.raises(InternalError):
        RatioStats.from_pairs([1.0], [0.0])
    with pytest.raises(UserError):
        RatioStats.from_ratios([])
    stats = RatioStats.from_ratios([1.5, 2.5])
    assert RatioStats.from_dict(stats.to_dict()) == stats

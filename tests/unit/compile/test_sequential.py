"""auto's sequential rule on synthetic per-pair ratios: dropping, separating, ties, budgets."""

from __future__ import annotations

import pytest

from edgekiln.compile import sequential
from edgekiln.compile.sequential import TimingBudget, judge
from edgekiln.errors import UserError

ORDER = ("onnxruntime", "litert", "tvm")
# The rule's logic at a 5% margin and separation from the first look, as most cases below
# were written for; the defaults are 10% and 20 pairs.
FIVE = TimingBudget(equivalence=0.05, separate_after=5)


def _ratios(center: float, n: int, jitter: float = 0.02) -> list[float]:
    """n deterministic ratios spread evenly within +-jitter (relative) around center."""
    if n == 1:
        return [center]
    return [center * (1 - jitter + 2 * jitter * i / (n - 1)) for i in range(n)]


def test_nothing_is_decided_before_a_few_pairs():
    verdict = judge({"onnxruntime": [1.0, 1.0], "tvm": [50.0, 51.0]}, ORDER, FIVE, 0.0)
    assert verdict.outcome == "continue" and not verdict.dropped and verdict.chosen is None


def test_a_clearly_slower_candidate_is_dropped_after_drop_after_pairs():
    verdict = judge(
        {"onnxruntime": _ratios(1.0, 3), "litert": _ratios(1.02, 3), "tvm": _ratios(40.0, 3)},
        ORDER,
        FIVE,
        1.0,
    )
    assert verdict.outcome == "continue"  # the two close ones need min_pairs first
    assert list(verdict.dropped) == ["tvm"]
    assert verdict.dropped["tvm"] == (
        "dropped after 3 pairs: 40.000x (95% CI 39.200-40.800, 3 pairs) ONNX Runtime, at least 3x the "
        "leader onnxruntime's 1.000x (95% CI 0.980-1.020, 3 pairs)"
    )
    # Exactly 3x the leader is dropped; 2.9x is not (the factor is a floor on the medians).
    at = judge({"onnxruntime": _ratios(1.0, 3), "tvm": _ratios(3.0, 3)}, ORDER, FIVE, 0)
    below = judge({"onnxruntime": _ratios(1.0, 3), "tvm": _ratios(2.9, 3)}, ORDER, FIVE, 0)
    assert (at.outcome, at.chosen) == ("only one left", "onnxruntime") and "tvm" in at.dropped
    assert below.outcome == "continue" and not below.dropped


def test_a_slow_candidate_with_overlapping_interval_is_not_dropped():
    noisy_leader = [1.0, 1.0, 5.0]  # one disturbed pair: its interval reaches 5.0
    verdict = judge({"onnxruntime": noisy_leader, "tvm": [3.5, 3.6, 3.7]}, ORDER, FIVE, 0)
    assert not verdict.dropped


def test_separated_intervals_name_the_lower_one():
    ratios = {"onnxruntime": _ratios(1.0, 10), "litert": _ratios(1.9, 10)}
    verdict = judge(ratios, ORDER, FIVE, 2.0)
    assert (verdict.outcome, verdict.chosen) == ("separated", "onnxruntime")
    assert verdict.stats["litert"].median == pytest.approx(1.9)
    text = sequential.reason(verdict, "evidence row x86_64-cpu/fp32's order", FIVE, 2.0)
    assert text == (
        "onnxruntime is fastest, every other's 95% CI more than 5% above its own (time "
        "ratio to ONNX Runtime on the source "
        "model: onnxruntime 1.000x (95% CI 0.980-1.020, 10 pairs); litert 1.900x (95% CI 1.862-1.938, 10 pairs))"
    )
    # The separated lower one wins even when it comes later in the tie order.
    flipped = judge({"onnxruntime": _ratios(1.9, 10), "litert": _ratios(1.0, 10)}, ORDER, FIVE, 0)
    assert flipped.chosen == "litert"


def test_overlapping_but_narrow_intervals_tie_and_the_order_breaks_it():
    # litert's median is lower, but within 5% of onnxruntime: the tie rule keeps onnxruntime.
    ratios = {"onnxruntime": _ratios(1.0, 10, 0.01), "litert": _ratios(0.995, 10, 0.01)}
    verdict = judge(ratios, ORDER, FIVE, 1.0)
    assert (verdict.outcome, verdict.chosen) == ("tied", "onnxruntime")
    text = sequential.reason(verdict, "the profile's order", FIVE, 1.0)
    assert text.startswith("tied within 5% (time ratio to ONNX Runtime on the source model: litert 0.995x")
    assert text.endswith(
        "kept onnxruntime by the tie rule: first in the profile's order among those whose CIs lie within 5% "
        "of the leader's (the rest clearly behind)"
    )
    # The same figures give the same choice every time, whichever dict order they come in.
    assert judge(dict(reversed(list(ratios.items()))), ORDER, FIVE, 1.0).chosen == "onnxruntime"


def test_narrow_intervals_apart_by_less_than_the_equivalence_tie_rather_than_separate():
    # 2% apart with +-0.5% intervals: disjoint, but a difference no user sees; a compile that
    # separated them and the next that did not would flip the backend. The order keeps one.
    ratios = {"onnxruntime": _ratios(1.02, 10, 0.005), "litert": _ratios(1.0, 10, 0.005)}
    assert ratios["onnxruntime"][0] > ratios["litert"][-1]
    verdict = judge(ratios, ORDER, FIVE, 1.0)
    assert (verdict.outcome, verdict.chosen) == ("tied", "onnxruntime")
    # 3% apart, intervals about 2% wide: disjoint, but neither tied (a 5.5% span) nor more than 5% apart
    # (mobilenet_v2 on a 2-core AMD host, litert 0.964 (0.952-0.972) and onnxruntime 0.992
    # (0.981-1.005) after 20 pairs). It is timed on, and the budget's end keeps the order's.
    close = {"onnxruntime": _ratios(0.99, 20), "litert": _ratios(0.96, 20)}
    ort, litert = (sequential.RatioStats.from_ratios(close[n]) for n in ("onnxruntime", "litert"))
    assert litert.ci95_high < ort.ci95_low and ort.ci95_high > 1.05 * litert.ci95_low
    assert judge(close, ORDER, FIVE, 1.0).outcome == "continue"
    at_end = judge(close, ORDER, TimingBudget(max_pairs=20, equivalence=0.05), 1.0)
    assert (at_end.outcome, at_end.chosen) == ("undecided", "onnxruntime")
    assert sequential.reason(at_end, "the profile's order", FIVE, 1.0).endswith(
        "kept onnxruntime by the tie rule: first in the profile's order among those not clearly behind the "
        "leader (a CI whose lower bound is within 5% of the leader's upper bound)"
    )
    # 8% apart with the same narrow intervals: separated, the faster one wins whatever the order.
    apart = {"onnxruntime": _ratios(1.08, 10, 0.005), "litert": _ratios(1.0, 10, 0.005)}
    assert judge(apart, ORDER, FIVE, 1.0).chosen == "litert"
    # A third candidate within 5% of the leader may be the one the order keeps.
    three = {**ratios, "tvm": _ratios(1.03, 10, 0.005)}
    assert judge(three, ("tvm", "litert", "onnxruntime"), FIVE, 1.0).chosen == "tvm"


def test_wide_overlapping_intervals_go_on_until_the_budget_then_say_undecided():
    wide = {"onnxruntime": _ratios(1.0, 10, 0.3), "litert": _ratios(0.9, 10, 0.3)}
    assert judge(wide, ORDER, FIVE, 5.0).outcome == "continue"
    by_time = judge(wide, ORDER, TimingBudget(max_seconds=5.0, equivalence=0.05), 5.0)
    assert (by_time.outcome, by_time.chosen) == ("undecided", "onnxruntime")
    full = {k: v * 4 for k, v in wide.items()}  # 40 pairs each: max_pairs
    by_pairs = judge(full, ORDER, FIVE, 1.0)
    assert (by_pairs.outcome, by_pairs.chosen) == ("undecided", "onnxruntime")
    text = sequential.reason(by_pairs, "the profile's order", FIVE, 12.4)
    assert text.startswith(
        "undecided: onnxruntime neither tied with litert nor clearly behind it when the budget "
        "(40 pairs, 60 s; 12 s spent) ran out"
    )
    # Disjoint intervals (0.969-1.031, 1.037-1.053) with medians 4.5% apart and too wide to
    # tie, at the end of the budget: undecided, and the reason says the intervals are apart.
    close = {"onnxruntime": _ratios(1.045, 40, 0.02), "litert": _ratios(1.0, 40, 0.08)}
    near = judge(close, ORDER, FIVE, 1.0)
    assert (near.outcome, near.chosen) == ("undecided", "onnxruntime")
    assert near.stats["litert"].ci95_high < near.stats["onnxruntime"].ci95_low
    near_text = sequential.reason(near, "the profile's order", FIVE, 3.0)
    assert near_text.startswith("undecided: onnxruntime neither tied with litert nor clearly behind it")


def test_a_wide_interval_reaching_the_leader_keeps_the_timing_going_rather_than_tie_without_it():
    # Measured after 5 pairs on MobileNetV2 (AMD host): litert and openvino narrow and within
    # 5%, onnxruntime's interval wide. A tie between the first two kept litert, where the next
    # compile, timing on, kept onnxruntime.
    stats = {"litert": (0.968, 0.986), "openvino": (0.974, 1.010), "onnxruntime": (0.957, 1.045)}
    ratios = {n: _ratios((lo + hi) / 2, 5, (hi - lo) / (lo + hi)) for n, (lo, hi) in stats.items()}
    order = ("onnxruntime", "litert", "openvino")
    assert judge(ratios, order, FIVE, 1.0).outcome == "continue"
    # Out of budget, the wide one is close to the leader and first in the order.
    undecided = judge(ratios, order, TimingBudget(max_seconds=1.0, equivalence=0.05), 1.0)
    assert (undecided.outcome, undecided.chosen) == ("undecided", "onnxruntime")
    # Once its interval narrows to within 5% of the leader's, all three tie.
    ratios["onnxruntime"] = _ratios(0.99, 5, 0.01)
    tied = judge(ratios, order, FIVE, 1.0)
    assert (tied.outcome, tied.chosen) == ("tied", "onnxruntime")


def test_the_tie_rule_only_considers_candidates_overlapping_the_leader():
    # tvm is first in this order but clearly above the leader's interval: never picked by the tie rule.
    order = ("tvm", "onnxruntime", "litert")
    ratios = {"tvm": _ratios(2.0, 10, 0.05), "onnxruntime": _ratios(1.0, 10, 0.3), "litert": _ratios(1.05, 10, 0.3)}
    verdict = judge(ratios, order, TimingBudget(max_seconds=1, equivalence=0.05), 2.0)
    assert (verdict.outcome, verdict.chosen) == ("undecided", "onnxruntime")


def test_budget_and_order_errors():
    with pytest.raises(UserError, match="drop_after <= min_pairs <= max_pairs"):
        TimingBudget(min_pairs=50)
    with pytest.raises(UserError, match="drop_factor > 1"):
        TimingBudget(drop_factor=1.0)
    with pytest.raises(UserError, match="threads must be at least 1"):
        TimingBudget(threads=0)
    for processes in (0, 5):
        with pytest.raises(UserError, match=f"1 to 4 worker processes per candidate, got {processes}"):
            TimingBudget(processes=processes)
    assert TimingBudget().processes == 2
    with pytest.raises(UserError, match=r"unranked: \['openvino'\]"):
        judge({"openvino": [1.0] * 5}, ORDER, FIVE, 0)


def test_separation_is_only_judged_at_the_looks():
    assert sequential.looks(FIVE) == (5, 10, 20, 40)
    assert sequential.looks(TimingBudget(min_pairs=5, max_pairs=8)) == (5, 8)
    apart = {"onnxruntime": _ratios(1.0, 7), "litert": _ratios(1.9, 7)}
    # 7 pairs is between looks: no decision yet, even with disjoint intervals...
    assert judge(apart, ORDER, FIVE, 1.0).outcome == "continue"
    # ...unless the time budget is spent.
    assert judge(apart, ORDER, TimingBudget(max_seconds=1.0, equivalence=0.05), 1.0).outcome == "separated"
    # Dropping does not wait for a look.
    assert "tvm" in judge({**apart, "tvm": _ratios(30.0, 7)}, ORDER, FIVE, 1.0).dropped


def test_the_default_margin_does_not_separate_what_differed_between_runs_of_the_same_artifacts():
    # Measured on MobileNetV2 (AMD host): litert 0.927 (0.888-0.949) against onnxruntime 1.002
    # (0.979-1.017) after 5 pairs in one compile; 0.978-0.999 in other runs of the same
    # artifacts. A rule comparing medians at a 5% margin separated this and shipped litert;
    # now it is timed on: only without a margin would the disjoint intervals separate.
    stats = {"litert": (0.888, 0.927, 0.949), "onnxruntime": (0.979, 1.002, 1.017)}
    ratios = {n: [lo, lo, mid, hi, hi] for n, (lo, mid, hi) in stats.items()}
    assert TimingBudget().equivalence == 0.10
    assert judge(ratios, ORDER, TimingBudget(equivalence=0.0, separate_after=5), 1.0).outcome == "separated"
    assert judge(ratios, ORDER, FIVE, 1.0).outcome == "continue"
    assert judge(ratios, ORDER, TimingBudget(), 1.0).outcome == "continue"
    undecided = judge(ratios, ORDER, TimingBudget(max_seconds=1.0), 1.0)
    assert (undecided.outcome, undecided.chosen) == ("undecided", "onnxruntime")


def test_one_candidate_is_named_fastest_only_after_separate_after_pairs():
    # Measured on MobileNetV2 (AMD host): litert 0.843 (0.715-0.908) after 5 pairs, the others
    # from 0.926 up; other runs of the same artifacts had litert 0-10% ahead. Its interval
    # reaches within 10% of theirs, so even a first look would not name it fastest.
    measured = {
        "litert": [0.715, 0.80, 0.843, 0.88, 0.908],
        "onnxruntime": [0.982, 1.0, 1.015, 1.05, 1.087],
        "openvino": [0.926, 0.95, 0.996, 1.03, 1.062],
    }
    order = ("onnxruntime", "litert", "openvino")
    assert judge(measured, order, TimingBudget(separate_after=5), 1.0).outcome == "continue"
    # A 20% lead, its interval (0.76-0.84) more than 10% below the others' (from 0.95): named
    # fastest at the first look only when separation is allowed there; by default from 20.
    early = {"litert": _ratios(0.8, 5, 0.05), "onnxruntime": _ratios(1.0, 5, 0.05), "openvino": _ratios(1.0, 5, 0.05)}
    assert judge(early, order, TimingBudget(), 1.0).outcome == "continue"
    assert judge(early, order, TimingBudget(separate_after=5), 1.0).chosen == "litert"
    held = {"litert": _ratios(0.8, 20, 0.05), "onnxruntime": _ratios(1.0, 20, 0.05), "openvino": _ratios(1.0, 20, 0.05)}
    verdict = judge(held, order, TimingBudget(), 1.0)
    assert (verdict.outcome, verdict.chosen) == ("separated", "litert")


def test_a_lead_just_past_the_margin_with_intervals_reaching_within_it_keeps_the_order():
    # Measured on mobilenet_v3_small (AMD host, two processes per runtime): litert 0.905
    # (0.887-0.923) and onnxruntime 0.997 (0.961-1.020) after 40 pairs. Medians 10.2% apart
    # separated this under a rule comparing medians and shipped litert, where two other
    # compiles of the model in the same hour were undecided and kept onnxruntime. The
    # intervals leave the difference anywhere from 4% to 15%: unclear, so timed on.
    ratios = {"litert": _ratios(0.905, 20, 0.035), "onnxruntime": _ratios(0.997, 20, 0.06)}
    litert, ort = (sequential.RatioStats.from_ratios(ratios[n]) for n in ("litert", "onnxruntime"))
    assert ort.median > 1.1 * litert.median and ort.ci95_low > litert.ci95_high
    assert ort.ci95_low < 1.1 * litert.ci95_high
    assert judge(ratios, ORDER, TimingBudget(), 1.0).outcome == "continue"
    undecided = judge(ratios, ORDER, TimingBudget(max_pairs=20), 1.0)
    assert (undecided.outcome, undecided.chosen, undecided.unclear) == ("undecided", "onnxruntime", ("onnxruntime",))
    # A 15% lead with intervals as wide is more than 10% beyond doubt: separated.
    ahead = {"litert": _ratios(0.85, 20, 0.035), "onnxruntime": _ratios(0.997, 20, 0.06)}
    assert (judge(ahead, ORDER, TimingBudget(), 1.0).outcome, judge(ahead, ORDER, TimingBudget(), 1.0).chosen) == (
        "separated",
        "litert",
    )


def test_the_reason_names_the_leader_and_unclear_candidates_the_rule_used():
    # Equal medians: the rule ranks by the tie order, so onnxruntime leads although litert
    # comes first here; the reason must not rank again by median alone and swap them.
    ratios = {"litert": _ratios(1.0, 40, 0.3), "onnxruntime": _ratios(1.0, 40, 0.01)}
    verdict = judge(ratios, ORDER, TimingBudget(max_seconds=1.0), 1.0)
    assert verdict.outcome == "undecided" and verdict.chosen == "onnxruntime"
    assert (verdict.ranking, verdict.unclear) == (("onnxruntime", "litert"), ("litert",))
    text = sequential.reason(verdict, "the profile's order", TimingBudget(), 1.0)
    assert text.startswith("undecided: litert neither tied with onnxruntime nor clearly behind it")
    assert text.index("onnxruntime 1.000x") < text.index("litert 1.000x")
    # A dropped candidate is in neither list.
    slow = judge({**ratios, "tvm": _ratios(40.0, 40)}, ORDER, TimingBudget(max_seconds=1.0), 1.0)
    assert "tvm" in slow.dropped and (slow.ranking, slow.unclear) == (verdict.ranking, verdict.unclear)

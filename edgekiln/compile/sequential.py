"""When ``--backend auto`` has timed enough: the sequential rule, apart from any timing.

Each candidate's evidence is its list of per-pair ratios to ONNX Runtime on the source
model (candidate time / baseline time of one interleaved pair, :mod:`edgekiln.execute.timing`),
summarised by :class:`~edgekiln.execute.statistics.RatioStats` (median and a distribution-free
95% confidence interval of it). After every round of pairs, :func:`judge` says:

- **drop** a candidate that is clearly slower, once every candidate has ``drop_after`` pairs: its
  median is at least ``drop_factor`` times the leader's and its interval lies wholly above
  the leader's (untuned TVM on a CPU, 30-100x ONNX Runtime, leaves after the first pairs);
- **tied** or **separated**, once every other candidate is either *tied* with the leader (the
  lowest median: both intervals lie within ``equivalence`` of each other, the highest upper
  bound at most 1 + ``equivalence`` times the lowest lower bound) or *apart* from it
  (slower by more than ``equivalence`` beyond its interval: its lower bound above 1 +
  ``equivalence`` times the leader's upper bound, a superiority test with a margin).
  With any tied, the outcome is "tied", since more pairs would not change what a user sees;
  with all apart, "separated", and the leader wins. A candidate that is neither (a wide
  interval, or a difference that may or may not exceed ``equivalence``) keeps the timing
  going: a tie among the narrow-interval candidates that left out a wide one, a 3%
  difference that separated in one compile and tied in the next, and medians 10.2% apart
  with the slower one's interval reaching within 4% of the faster's, separated at a 10%
  margin where two other compiles of the same model were undecided, each flipped the
  backend between identical compiles;
- **undecided**: the budget (``max_pairs`` per candidate, ``max_seconds`` of timing) ran out
  first.

Separation and ties are only looked at after ``min_pairs``, then at twice as many, and so on
(5, 10, 20, 40 pairs by default; separation from ``separate_after``, 20), and when the budget
runs out: a group-sequential design,
because a look after every pair would, by chance alone, find two equal candidates
"separated" far more often than the 95% intervals promise.

Tied and undecided choices follow one deterministic tie rule: the first in the ``order``
given (the evidence row's order of fastest backends for the target, else the profile's
preference order) among the leader and the candidates not apart from it (tied with it or,
when undecided, unclear). The choice therefore changes between repeated compiles only where
a candidate is apart from the evidence order's first in one timing run and not in the next:
a difference near ``equivalence`` plus the intervals' widths. A runtime's speed can also
differ between processes: litert on the AMD host ran 0.85-0.90 of ONNX Runtime's time in
some fresh worker processes and 0.99-1.05 in others, steady within each. The timing
therefore runs each candidate and the baseline in ``processes`` workers taken in turn, so
that such a difference widens the interval rather than separating the candidates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from edgekiln.errors import UserError
from edgekiln.execute.statistics import RatioStats


@dataclass(frozen=True)
class TimingBudget:
    """How ``--backend auto`` times candidates on this host, and when it stops.

    ``drop_after``: pairs each candidate gets before a clearly slower one may be dropped;
    ``min_pairs``: pairs each candidate gets before a winner is named among close ones;
    ``separate_after``: pairs before one may be named fastest over the others (a tie needs
    only ``min_pairs``; the end of the budget allows either);
    ``max_pairs``: pairs per candidate at most; ``max_seconds``: the whole timing (workers'
    loading included) at most; ``drop_factor``: a candidate this many times slower than the
    leader (median ratio) with disjoint intervals stops being timed; ``equivalence``: the
    relative width within which a candidate counts as tied with the leader; ``threads``: CPU threads of
    every runtime alike (None: the CPUs this process may use); ``processes``: worker
    processes per candidate and for the baseline, timed in turn.
    """

    drop_after: int = 3
    min_pairs: int = 5
    # Separation overrides the evidence order, so it waits for more pairs than a tie: once,
    # litert's first 5 pairs on MobileNetV2 put it 16% ahead (0.84 against 1.00) where every
    # other run of the same artifacts had it 0-10% ahead.
    separate_after: int = 20
    max_pairs: int = 40
    max_seconds: float = 60.0
    drop_factor: float = 3.0
    # Between runs of the same artifacts on one host, litert's ratio on MobileNetV2 ranged
    # 0.90-1.00 while each run's own interval was 2-5% wide; with a 5% margin, two of six
    # zoo models changed backend between identical compiles.
    equivalence: float = 0.10
    threads: int | None = None
    # Each candidate (and the baseline) runs in this many worker processes, taken in turn:
    # litert ran 0.85-0.90 of ONNX Runtime's time in some fresh processes and 0.99-1.05 in
    # others, steady within each, so one process is one draw of a runtime's speed.
    processes: int = 2

    def __post_init__(self) -> None:
        if not 3 <= self.drop_after <= self.min_pairs <= self.max_pairs:
            raise UserError(
                "auto timing needs 3 <= drop_after <= min_pairs <= max_pairs, got "
                f"{self.drop_after}, {self.min_pairs} and {self.max_pairs}"
            )
        if self.max_seconds <= 0 or self.drop_factor <= 1 or not 0 <= self.equivalence < 1:
            raise UserError("auto timing needs max_seconds > 0, drop_factor > 1 and 0 <= equivalence < 1")
        if not 1 <= self.processes <= 4:
            raise UserError(f"auto timing needs 1 to 4 worker processes per candidate, got {self.processes}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"auto timing threads must be at least 1, got {self.threads}")


@dataclass(frozen=True)
class Verdict:
    """What :func:`judge` concluded after one round.

    ``outcome`` is "continue", "separated", "tied", "undecided" or "only one left";
    ``dropped`` maps each candidate to drop now to why; ``chosen`` is set unless continuing;
    ``ranking``: the candidates still timed, leader first, as the rule ranked them (median,
    then ``order``); ``unclear``: those neither tied with the leader nor clearly behind it.
    The reason text reads these rather than ranking again, so it names what the rule used.
    """

    outcome: str
    chosen: str | None = None
    dropped: Mapping[str, str] = field(default_factory=dict)
    stats: Mapping[str, RatioStats] = field(default_factory=dict)
    ranking: tuple[str, ...] = ()
    unclear: tuple[str, ...] = ()


def looks(budget: TimingBudget) -> tuple[int, ...]:
    """The pair counts at which separation and ties are judged: min_pairs, doubling, max_pairs."""
    counts, n = [], budget.min_pairs
    while n < budget.max_pairs:
        counts.append(n)
        n *= 2
    return (*counts, budget.max_pairs)


def describe(stats: RatioStats) -> str:
    """A candidate's figures as the reason text and the manifest give them."""
    return f"{stats.median:.3f}x (95% CI {stats.ci95_low:.3f}-{stats.ci95_high:.3f}, {stats.n} pairs)"


def judge(
    ratios: Mapping[str, Sequence[float]],
    order: Sequence[str],
    budget: TimingBudget,
    elapsed_s: float,
) -> Verdict:
    """The sequential rule over the still-timed candidates' per-pair ``ratios``.

    ``order`` ranks the candidates for the tie rule (every key of ``ratios`` must be in it).
    """
    missing = set(ratios) - set(order)
    if missing or not ratios:
        raise UserError(f"judge needs candidates, each ranked in the tie order (unranked: {sorted(missing)})")
    pairs = min(len(r) for r in ratios.values())
    if pairs < budget.drop_after:
        return Verdict("continue")
    stats = {name: RatioStats.from_ratios(r) for name, r in ratios.items()}
    ranked = sorted(stats, key=lambda n: (stats[n].median, order.index(n)))
    leader = stats[ranked[0]]
    dropped = {
        name: (
            f"dropped after {stats[name].n} pairs: {describe(stats[name])} ONNX Runtime, at least "
            f"{budget.drop_factor:g}x the leader {ranked[0]}'s {describe(leader)}"
        )
        for name in ranked[1:]
        if stats[name].median >= budget.drop_factor * leader.median and stats[name].ci95_low > leader.ci95_high
    }
    left = tuple(n for n in ranked if n not in dropped)
    if len(left) == 1:
        return Verdict("only one left", left[0], dropped, stats, left)
    out_of_budget = pairs >= budget.max_pairs or elapsed_s >= budget.max_seconds
    if pairs < budget.min_pairs or not (out_of_budget or pairs in looks(budget)):
        return Verdict("continue", None, dropped, stats)
    relation = {n: _relation(stats[left[0]], stats[n], budget.equivalence) for n in left[1:]}
    unclear = tuple(n for n in left[1:] if relation[n] == "unclear")
    # The tie rule's choice: the first in the order among those not apart from the leader.
    kept = min((left[0], *(n for n in left[1:] if relation[n] != "apart")), key=order.index)
    if not unclear:
        if "tied" in relation.values():
            return Verdict("tied", kept, dropped, stats, left)
        # Without a tie, out of budget means separated here, so "undecided" always has an
        # unclear candidate to name.
        if pairs >= budget.separate_after or out_of_budget:
            return Verdict("separated", left[0], dropped, stats, left)
    if out_of_budget:
        return Verdict("undecided", kept, dropped, stats, left, unclear)
    return Verdict("continue", None, dropped, stats, left, unclear)


def _relation(leader: RatioStats, other: RatioStats, equivalence: float) -> str:
    """ "tied": both intervals lie within ``equivalence`` of each other; "apart": the other's
    lower bound is more than ``equivalence`` above the leader's upper bound, so it is slower
    by more than the margin whichever values in the intervals are true; else "unclear", and
    more pairs are needed."""
    if max(leader.ci95_high, other.ci95_high) <= (1 + equivalence) * min(leader.ci95_low, other.ci95_low):
        return "tied"
    if other.ci95_low > (1 + equivalence) * leader.ci95_high:
        return "apart"
    return "unclear"


def reason(verdict: Verdict, order_source: str, budget: TimingBudget, elapsed_s: float) -> str:
    """The reason text of a verdict, with the figures the manifest records."""
    stats = verdict.stats
    chosen = verdict.chosen
    assert chosen is not None
    timed = verdict.ranking
    figures = "; ".join(f"{n} {describe(stats[n])}" for n in timed)
    what = "time ratio to ONNX Runtime on the source model"
    if verdict.outcome == "only one left":
        others = "the others were dropped as clearly slower or could not run"
        return f"{chosen} is the only candidate left to time ({others}; {what}: {figures})"
    if verdict.outcome == "separated":
        return (
            f"{chosen} is fastest, every other's 95% CI more than {budget.equivalence:.0%} above "
            f"its own ({what}: {figures})"
        )
    rule = f"kept {chosen} by the tie rule: first in {order_source} among those"
    if verdict.outcome == "tied":
        within = f"whose CIs lie within {budget.equivalence:.0%} of the leader's (the rest clearly behind)"
        return f"tied within {budget.equivalence:.0%} ({what}: {figures}); {rule} {within}"
    rule += (
        f" not clearly behind the leader (a CI whose lower bound is within {budget.equivalence:.0%} "
        "of the leader's upper bound)"
    )
    return (
        f"undecided: {', '.join(verdict.unclear)} neither tied with {timed[0]} nor clearly behind it when "
        f"the budget ({budget.max_pairs} pairs, "
        f"{budget.max_seconds:g} s; {elapsed_s:.0f} s spent) ran out ({what}: {figures}); {rule}"
    )

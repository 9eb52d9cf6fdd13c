"""The claim: at the end of a night (or when asked), the final frontier and the starting commit
run again side by side, and the gain is measured with its confidence interval.

Each keep was judged against the frontier of its moment; the keeps add up, and so can their
luck. So the end is measured against the start directly: N replicas each, queued alternately
(start, frontier, start, ...) for the lanes of one GPU model, so both see the same machine, the
same load and the same hour. N comes from the noise measured during the night: enough for a
true gain of the size seen to show at 95% with 80% power (results/claim.py), at most
`confirm_max`; `--confirm N` fixes it. The runs are experiments of kind `claim` (never judged);
the verdict is an events row `claim` naming every run, a `Claimed` event, and one notice.

A held-out check rides along: a harness whose evaluate_bpb also reads a split the judge never
sees prints `heldout_<metric>` in the claim runs' summaries (prepare.py, when the supervisor
asks with AUTORESEARCH_HELDOUT=1). A gain on the judged split that the held-out split does not
share -- less than half of it there, and the gap beyond the noise of both -- is a WARNING: the
line may be fitting the validation shard."""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field

from results.claim import Claim, compare, replicas
from results.records import DecisionSource, Experiment, Kind, Status

from . import events
from .state import ResearchState

log = logging.getLogger("autoresearch.supervisor")

HELDOUT_PREFIX = "heldout_"  # the summary key of the held-out measurement: heldout_val_bpb
HELDOUT_VARIABLE = "AUTORESEARCH_HELDOUT"  # set for the claim's runs: the harness measures its held-out split too
HELDOUT_GAP_Z = 2.0  # a held-out gain this many standard errors below the judged one ...
# ... and keeping less than this share of it is a warning. Two texts of the same kind never show
# the same gain to the digit (the demo's runs have no noise at all, yet its two splits differ by
# a few percent of the gain), so run-to-run noise alone would call every gap overfitting.
HELDOUT_SHARE = 0.5


@dataclass
class ClaimRuns:
    """The claim under way: its commits, model and runs."""

    start: str
    frontier: str
    model: str
    ends_night: bool  # measured at the night's end (it ends when the claim is in); else on request
    start_runs: list[int] = field(default_factory=list)
    frontier_runs: list[int] = field(default_factory=list)

    @property
    def ids(self) -> list[int]:
        return self.start_runs + self.frontier_runs


class Confirmation:
    def __init__(self, state: ResearchState, ledger, runs: int | None, cap: int, floor: float):
        self.state, self.ledger = state, ledger
        self.runs, self.cap, self.floor = runs, cap, floor  # --confirm N (None: from the noise), its cap
        self.active: ClaimRuns | None = None
        self.claim: Claim | None = None  # the last one measured

    # -- starting -------------------------------------------------------------------------------

    def start_commit(self) -> str | None:
        """The line's starting point: the commit its first baseline measured."""
        first = min((e for e in self.state.experiments.values() if e.kind is Kind.BASELINE and e.commit),
                    key=lambda e: e.id, default=None)
        return first.commit if first is not None else None

    def begin(self, ends_night: bool) -> str | None:
        """Queue the claim's runs; None when they are queued, else why there is nothing to claim."""
        state = self.state
        if self.active is not None:
            return "a claim is being measured"
        start, frontier = self.start_commit(), state.frontier
        if start is None:
            return "the starting point was never measured"
        if frontier == start:
            return "the frontier never moved from the starting point"
        usable = Counter(lane.model for lane in state.lanes if not lane.lost)
        if not usable:
            return "no lane is left to measure it on"
        model = usable.most_common(1)[0][0]
        n = self.runs or self._replicas(start, frontier, model)
        claim = ClaimRuns(start, frontier, model, ends_night)
        for i in range(n):
            for commit, ids, what in ((start, claim.start_runs, "the start"), (frontier, claim.frontier_runs,
                                                                                 "the frontier")):
                exp = self.ledger.new_experiment(Experiment(
                    run_id=state.run_id, lane=-1, kind=Kind.CLAIM, commit=commit, parent_commit=commit,
                    gpu_name=model, description=f"claim: {what} {commit[:8]} ({i + 1} of {n})"))
                ids.append(exp.id)
                state.pending.append(exp)
        self.active = claim
        self.ledger.notice(events.Level.INFO, f"measuring the claim: the frontier {frontier[:8]} and the start "
                                              f"{start[:8]}, {n} runs each, side by side on {model}")
        return None

    def _replicas(self, start: str, frontier: str, model: str) -> int:
        measurements = self.state.measurements
        noise = measurements.noise(model)
        a, b = measurements.mean(start, model), measurements.mean(frontier, model)
        gain = a - b if a is not None and b is not None else None  # scores: lower is better
        return replicas(noise.sigma, gain, self.cap)

    # -- settling ---------------------------------------------------------------------------------

    def waiting(self) -> bool:
        """Whether the claim under way still has runs queued or training."""
        if self.active is None:
            return False
        return any(not self.state.experiments[i].status.finished for i in self.active.ids)

    def settle(self) -> Claim:
        """Every run is in: the comparison, recorded and told."""
        claim_runs, state, metric = self.active, self.state, self.state.metric
        self.active = None

        def values(ids: list[int], key: str) -> tuple[list[int], list[float]]:
            kept = []
            for i in ids:
                exp = state.experiments[i]
                raw = exp.summary.get(key, exp.extra.get(key)) if exp.status is Status.OK else None
                try:
                    value = float(raw) if raw is not None else None
                except (TypeError, ValueError):
                    value = None
                if value is not None and math.isfinite(value):
                    kept.append((i, value))
            return [i for i, _ in kept], [v for _, v in kept]

        start_ids, start_values = values(claim_runs.start_runs, metric.name)
        frontier_ids, frontier_values = values(claim_runs.frontier_runs, metric.name)
        result = compare(start_values, frontier_values, metric)
        failed = len(claim_runs.ids) - len(start_ids) - len(frontier_ids)
        note = "" if result.gain is not None else (
            f"only {len(start_ids)} run(s) of the start and {len(frontier_ids)} of the frontier finished "
            f"({failed} failed)")
        claim = Claim(metric.name, claim_runs.start, claim_runs.frontier, claim_runs.model, tuple(start_ids),
                      tuple(frontier_ids), tuple(start_values), tuple(frontier_values), result.gain, result.ci_low,
                      result.ci_high, result.p_value, result.dof,
                      heldout=self._heldout(claim_runs, values, result), note=note)
        self.claim = claim
        self.ledger.event("claim", DecisionSource.AUTO, detail=claim.as_dict(), now=True)
        self.ledger.emit(events.Claimed(claim))
        self.ledger.notice(events.Level.INFO if claim.holds else events.Level.WARNING, f"claim: {claim.text()}")
        if claim.heldout is not None and claim.heldout.get("warning"):
            self.ledger.notice(events.Level.WARNING, claim.heldout["warning"])
        return claim

    def _heldout(self, claim_runs: ClaimRuns, values, judged) -> dict | None:
        """The same comparison on the held-out split, when the harness measured one."""
        metric = self.state.metric
        key = HELDOUT_PREFIX + metric.name
        _, start = values(claim_runs.start_runs, key)
        _, frontier = values(claim_runs.frontier_runs, key)
        held = compare(start, frontier, metric)
        if held.gain is None or judged.gain is None:
            return None
        se = math.hypot(judged.se or 0.0, held.se or 0.0)
        gap = judged.gain - held.gain
        beyond = gap > max(HELDOUT_GAP_Z * se, self.floor) and held.gain < HELDOUT_SHARE * judged.gain
        warning = (f"the gain on the held-out split ({held.gain:+.4f}) falls short of the gain on the judged split "
                   f"({judged.gain:+.4f}) by {gap:.4f}, beyond the noise of both and more than half of it: the "
                   f"line may be fitting the validation shard") if beyond else None
        return {"key": key, "gain": held.gain, "ci_low": held.ci_low, "ci_high": held.ci_high,
                "p_value": held.p_value, "gap": gap, "gap_sigma": gap / se if se else None, "warning": warning}

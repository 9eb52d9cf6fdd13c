"""Keep or discard: the harness decides, from measurements and their noise.

Two runs of the same commit on the same kind of GPU differ (data order, seeds, kernels), so a
candidate must beat its reference by more than that noise before it advances the frontier.
The noise is estimated from repeated measurements of the same commit on the same GPU model
(the baseline replicas every lane runs at start, and every confirmation since), pooled over
commits. Results are compared only within a GPU model: a faster card reaches a lower val_bpb in
the same wall-clock budget, and must not be crowned for it.

Scores are "lower is better"; a metric where higher is better is negated before it comes here."""

from __future__ import annotations

import enum
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass

# How many noise standard deviations a win must clear. Two keeps the false-keep rate near
# 2% for a single comparison of normal noise, without demanding a run of luck for real wins.
NOISE_Z = 2.0


class Ruling(enum.StrEnum):
    """What the noise rules say of a candidate: a str enum, so events carry the plain word."""

    KEEP = "keep"
    DISCARD = "discard"
    CONFIRM = "confirm"  # too close to the margin to tell: run it again


@dataclass(frozen=True)
class Verdict:
    action: Ruling
    reason: str
    delta: float | None = None  # reference - candidate (positive: the candidate is better)
    margin: float | None = None


class Measurements:
    """Every score measured, by (commit, GPU model)."""

    def __init__(self):
        self._values: dict[tuple[str, str], list[float]] = defaultdict(list)
        self._same: dict[str, str] = {}  # a commit -> the commit whose code (tree) it has

    def same_code(self, commit: str, as_commit: str) -> None:
        """`commit` holds exactly the code of `as_commit`: its measurements are those."""
        self._same[commit] = self._same.get(as_commit, as_commit)

    def add(self, commit: str, model: str, score: float) -> None:
        if math.isfinite(score):
            self._values[(self._same.get(commit, commit), model)].append(score)

    def of(self, commit: str, model: str) -> list[float]:
        return list(self._values.get((self._same.get(commit, commit), model), ()))

    def mean(self, commit: str, model: str) -> float | None:
        values = self._values.get((self._same.get(commit, commit), model))
        return statistics.fmean(values) if values else None

    def count(self, commit: str, model: str) -> int:
        return len(self._values.get((self._same.get(commit, commit), model), ()))

    def sigma(self, model: str) -> float | None:
        """Pooled standard deviation of repeated runs on this GPU model; None until some
        commit has been measured twice."""
        squares, dof = 0.0, 0
        for (_, m), values in self._values.items():
            if m == model and len(values) >= 2:
                mean = statistics.fmean(values)
                squares += sum((v - mean) ** 2 for v in values)
                dof += len(values) - 1
        return math.sqrt(squares / dof) if dof else None


@dataclass(frozen=True)
class Policy:
    floor: float = 0.001  # the least improvement ever kept, whatever the noise says
    z: float = NOISE_Z
    confirm: bool = True  # re-run wins that sit within one sigma of the margin

    def margin(self, sigma: float | None) -> float:
        return max(self.floor, self.z * sigma) if sigma is not None else self.floor

    def judge(self, runs: list[float], reference: float, sigma: float | None) -> Verdict:
        """runs: the candidate's scores so far (one, or more after confirmation)."""
        score = statistics.fmean(runs)
        delta = reference - score
        margin = self.margin(sigma)
        noise = f"margin {margin:.4f}" + (f" (noise sigma {sigma:.4f})" if sigma is not None else " (floor; noise not measured yet)")
        if delta <= margin:
            word = "worse than" if delta < 0 else "within the margin of"
            return Verdict(Ruling.DISCARD, f"{word} the reference: delta {delta:+.4f}, {noise}", delta, margin)
        if self.confirm and len(runs) == 1 and sigma is not None and delta < margin + sigma:
            return Verdict(Ruling.CONFIRM, f"a win within noise of the margin: delta {delta:+.4f}, {noise}; re-running",
                           delta, margin)
        runs_note = f" over {len(runs)} runs" if len(runs) > 1 else ""
        return Verdict(Ruling.KEEP, f"better by {delta:.4f}{runs_note}, {noise}", delta, margin)

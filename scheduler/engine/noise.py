"""Keep or discard: the harness decides, from measurements and their noise.

Two runs of the same commit on the same kind of GPU differ (data order, seeds, kernels), so a
candidate must beat its reference by more than that noise before it advances the frontier.

The noise is the pooled standard deviation of repeated runs of the same code on the same GPU
model: the baseline replicas every research line starts with, the frontier's replicas, and
every confirmation (but not the first run of a candidate, which was picked for its luck). While it rests on few degrees of freedom the estimate itself is unreliable
(two runs can say 0.0006 when the truth is 0.002), so margins use its upper confidence bound
until there are ENOUGH_DOF. A run that trained far slower than its replicas was disturbed (a
loaded machine runs fewer steps in the same wall-clock budget): it is set aside, not averaged
in, and run again. Results are compared only within a GPU model: a faster card reaches a lower
val_bpb in the same budget, and must not be crowned for it.

The rule, in full (`Policy.judge`), for a candidate's n runs against its reference's m runs,
with d = reference mean - candidate mean and se = sigma * sqrt(1/n + 1/m):
  d > KEEP_Z * se (and at least the floor)   keep
  d > RETEST_Z * se, fewer than MAX_RUNS      run again: a win inside noise is re-tested (the
                                              candidate, or its reference when that has fewer runs)
  otherwise                                   discard (worse, or no better than noise)
The frontier itself is re-measured as candidates are judged against it (replicas_wanted), so
its mean is not the lucky run that got it kept and se shrinks where it is used most.

Scores are "lower is better"; a metric where higher is better is negated before it comes here."""

from __future__ import annotations

import enum
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass

KEEP_Z = 2.5  # one-sided: a change that does nothing clears it in ~2% of candidates, re-tests included
RETEST_Z = 1.0  # a result between the two is neither a win nor a loss yet
MAX_RUNS = 4  # a candidate is run at most this many times before noise has its say
FRONTIER_RUNS = 2  # a new frontier's runs: the one that got it kept is biased by its selection ...
JUDGED_PER_REPLICA = 10  # ... and one more for every this many candidates judged against it ...
MAX_FRONTIER_RUNS = 8  # ... up to this many: a frontier many candidates fail to beat is worth knowing well
ENOUGH_DOF = 10  # below this the margin uses the upper confidence bound of sigma
SIGMA_CONFIDENCE = 0.8  # ... at this one-sided confidence
DISTURBED_BELOW = 0.6  # a run below this share of its replicas' best throughput was disturbed


class Ruling(enum.StrEnum):
    """What the noise rules say of a candidate: a str enum, so events carry the plain word."""

    KEEP = "keep"
    DISCARD = "discard"
    CONFIRM = "confirm"  # too close to tell, or disturbed: run it again


class Rule(enum.StrEnum):
    """Which rule decided: every decision names one, so the log can be audited by rule."""

    BASELINE = "baseline"  # the frontier itself, measured
    BEYOND_NOISE = "beyond-noise"  # better than its reference by more than the margin
    LOWER = "lower"  # upstream's greedy rule: any measured improvement
    WORSE = "worse"  # measured worse than (or equal to) its reference
    WITHIN_NOISE = "within-noise"  # better, but by less than the noise explains
    RETEST = "retest"  # a win inside noise: run again before deciding
    DISTURBED = "disturbed"  # trained far slower than its reference's runs: run again
    FAILED = "failed"  # crashed, ran out of memory, diverged, hung
    CONFLICT = "conflict"  # clashes with a frontier that moved, and does not beat it
    REMEASURE = "remeasure"  # the frontier moved meanwhile: measured again on top of it
    PERSON = "person"  # a person decided
    CONSTRAINT = "constraint"  # past a ceiling of [target] constraints (peak VRAM, parameters, ...)


@dataclass(frozen=True)
class Noise:
    """What is known of run-to-run noise on one GPU model."""

    sigma: float | None  # the pooled estimate; None until some code ran twice undisturbed
    dof: int  # its degrees of freedom
    used: float | None  # what margins use: the upper confidence bound while dof < ENOUGH_DOF

    @classmethod
    def of(cls, sigma: float | None, dof: int) -> Noise:
        if sigma is None or dof < 1:
            return cls(None, 0, None)
        return cls(sigma, dof, sigma_upper_bound(sigma, dof) if dof < ENOUGH_DOF else sigma)


@dataclass(frozen=True)
class Verdict:
    action: Ruling
    rule: Rule
    reason: str
    delta: float | None = None  # reference - candidate (positive: the candidate is better)
    margin: float | None = None  # the improvement this comparison needed to keep
    noise: Noise | None = None


@dataclass(frozen=True)
class Measured:
    score: float
    throughput: float | None  # tokens (or steps) per training second, when the run said
    # A candidate's first run: it decided whether the candidate was re-run or kept, so it is
    # selected for being lucky. It counts in the candidate's mean, never in the noise estimate
    # (pairing it with its re-runs would inflate sigma by the luck that got it re-run).
    selected: bool = False


class Measurements:
    """Every score measured, by (commit, GPU model)."""

    def __init__(self):
        self._runs: dict[tuple[str, str], list[Measured]] = defaultdict(list)
        self._same: dict[str, str] = {}  # a commit -> the commit whose code (tree) it has
        # The scheduler asks for the noise on every pass a lane is free: it walks every code
        # measured, so it is kept until a measurement changes it.
        self._noise: dict[str, Noise] = {}

    def same_code(self, commit: str, as_commit: str) -> None:
        """`commit` holds exactly the code of `as_commit`: its measurements are those."""
        self._same[commit] = self._same.get(as_commit, as_commit)
        self._noise.clear()

    def _key(self, commit: str, model: str) -> tuple[str, str]:
        return self._same.get(commit, commit), model

    def add(self, commit: str, model: str, score: float, throughput: float | None = None,
            selected: bool = False) -> None:
        if math.isfinite(score):
            self._runs[self._key(commit, model)].append(Measured(score, throughput, selected))
            self._noise.pop(model, None)

    def trusted(self, commit: str, model: str) -> list[Measured]:
        """The runs of this code that were not disturbed: a run below DISTURBED_BELOW of the
        fastest run of the same code is left out (disturbances only ever slow a run down)."""
        runs = self._runs.get(self._key(commit, model), ())
        fastest = max((r.throughput for r in runs if r.throughput), default=None)
        return [r for r in runs if not (fastest and r.throughput and r.throughput < DISTURBED_BELOW * fastest)]

    def of(self, commit: str, model: str) -> list[float]:
        return [r.score for r in self.trusted(commit, model)]

    def mean(self, commit: str, model: str) -> float | None:
        values = self.of(commit, model)
        return statistics.fmean(values) if values else None

    def count(self, commit: str, model: str) -> int:
        return len(self.trusted(commit, model))

    def attempts(self, commit: str, model: str) -> int:
        """Every run of this code, disturbed ones included."""
        return len(self._runs.get(self._key(commit, model), ()))

    def best_throughput(self, commit: str, model: str) -> float | None:
        return max((r.throughput for r in self._runs.get(self._key(commit, model), ()) if r.throughput), default=None)

    def noise(self, model: str) -> Noise:
        """The pooled estimate over every code measured more than once on this GPU model,
        from its undisturbed runs that were not selected on their value."""
        if model not in self._noise:
            self._noise[model] = self._pooled(model)
        return self._noise[model]

    def _pooled(self, model: str) -> Noise:
        squares, dof = 0.0, 0
        for key in self._runs:
            if key[1] != model:
                continue
            values = [r.score for r in self.trusted(*key) if not r.selected]
            if len(values) >= 2:
                mean = statistics.fmean(values)
                squares += sum((v - mean) ** 2 for v in values)
                dof += len(values) - 1
        return Noise.of(math.sqrt(squares / dof) if dof else None, dof)


def throughput(summary: dict) -> float | None:
    """Work per second of training, from a run's summary: tokens when the trainer printed
    enough digits of them (upstream prints millions to one decimal, which a small model's
    0.1 M cannot resolve), steps otherwise."""
    seconds = summary.get("training_seconds")
    if not seconds or seconds <= 0:
        return None
    tokens, steps = summary.get("total_tokens_M"), summary.get("num_steps")
    work = tokens if tokens and tokens >= 10 else steps or tokens
    return float(work) / float(seconds) if work else None


# -- the confidence bound ----------------------------------------------------------------------

def _lower_gamma_regularized(a: float, x: float) -> float:
    """P(a, x), by its power series: enough for the chi-square quantiles of small dof."""
    if x <= 0:
        return 0.0
    term = total = 1.0 / a
    k = a
    for _ in range(1000):
        k += 1
        term *= x / k
        total += term
        if term < 1e-16 * total:
            break
    return min(1.0, total * math.exp(-x + a * math.log(x) - math.lgamma(a)))


def chi2_quantile(p: float, dof: int) -> float:
    """The p-quantile of the chi-square distribution with `dof` degrees of freedom."""
    lo, hi = 0.0, dof + 40.0 * math.sqrt(dof) + 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if _lower_gamma_regularized(dof / 2, mid / 2) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def sigma_upper_bound(sigma: float, dof: int, confidence: float = SIGMA_CONFIDENCE) -> float:
    """The one-sided upper confidence bound of a standard deviation estimated with `dof`
    degrees of freedom: (dof * s^2 / sigma^2) is chi-square, so sigma <= s * sqrt(dof / q)
    with probability `confidence`, q its (1 - confidence) quantile."""
    return sigma * math.sqrt(dof / chi2_quantile(1 - confidence, dof))


# -- the policies -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Policy:
    """Ours: keep beyond the noise, re-test inside it, discard the rest."""

    floor: float = 0.001  # the least improvement ever kept, whatever the noise says
    keep_z: float = KEEP_Z
    retest_z: float = RETEST_Z
    max_runs: int = MAX_RUNS
    # The starting point's runs per GPU model; None: two rounds of its lanes, and at least four
    # (three dof before anything is judged; more lanes buy more dof in the same two rounds).
    baseline_runs: int | None = None

    def starting_runs(self, lanes: int) -> int:
        return self.baseline_runs if self.baseline_runs is not None else max(4, 2 * lanes)

    def replicas_wanted(self, noise: Noise, judged: int = 0, lanes: int = 1) -> int:
        """Runs of the frontier wanted on a GPU model with `lanes` lanes: the starting point's
        until the noise has that many runs' dof; then FRONTIER_RUNS, and one more per
        JUDGED_PER_REPLICA candidates `judged` against it, up to MAX_FRONTIER_RUNS."""
        start = self.starting_runs(lanes)
        if noise.dof < start - 1:
            return start
        return min(MAX_FRONTIER_RUNS, FRONTIER_RUNS + judged // JUDGED_PER_REPLICA)

    def margin(self, noise: Noise, runs: int = 1, reference_runs: int = 1) -> float:
        if noise.used is None:
            return self.floor
        return max(self.floor, self.keep_z * noise.used * math.sqrt(1 / runs + 1 / reference_runs))

    def judge(self, runs: list[float], reference: list[float], noise: Noise) -> Verdict:
        """runs: the candidate's undisturbed scores so far; reference: its reference's."""
        n, m = len(runs), len(reference)
        delta = statistics.fmean(reference) - statistics.fmean(runs)
        margin = self.margin(noise, n, m)
        said = _noise_words(delta, margin, noise, n, m)
        if delta > margin:
            return Verdict(Ruling.KEEP, Rule.BEYOND_NOISE, f"better by {delta:.4f}{said}", delta, margin, noise)
        if delta <= 0:
            return Verdict(Ruling.DISCARD, Rule.WORSE, f"worse than the reference{said}", delta, margin, noise)
        # Either side may be measured again: the candidate up to max_runs, its reference up to
        # as many runs as the candidate has (the judge runs the less certain one).
        more = n < self.max_runs or m < min(n, MAX_FRONTIER_RUNS)
        # No noise at all (runs of fixed steps and seed measure the same every time): a re-run
        # would measure the same, so a gain under the floor is decided now.
        retest = (noise.used is not None and noise.used > 0 and more
                  and delta > self.retest_z * noise.used * math.sqrt(1 / n + 1 / m))
        if retest:
            return Verdict(Ruling.CONFIRM, Rule.RETEST, f"a win inside noise{said}", delta, margin, noise)
        return Verdict(Ruling.DISCARD, Rule.WITHIN_NOISE, f"no better than noise{said}", delta, margin, noise)


@dataclass(frozen=True)
class GreedyPolicy:
    """Upstream autoresearch's rule, for comparison (bench/bench_decisions.py): keep whatever
    measures lower than the frontier, once, from one baseline run."""

    floor: float = 0.0
    baseline_runs: int = 1
    max_runs: int = 1

    def replicas_wanted(self, noise: Noise, judged: int = 0, lanes: int = 1) -> int:
        return 1

    def margin(self, noise: Noise, runs: int = 1, reference_runs: int = 1) -> float:
        return self.floor

    def judge(self, runs: list[float], reference: list[float], noise: Noise) -> Verdict:
        delta = statistics.fmean(reference) - statistics.fmean(runs)
        if delta > self.floor:
            return Verdict(Ruling.KEEP, Rule.LOWER, f"lower by {delta:.4f} (greedy rule)", delta, self.floor, noise)
        return Verdict(Ruling.DISCARD, Rule.WORSE, f"not lower: delta {delta:+.4f} (greedy rule)", delta,
                       self.floor, noise)


def _noise_words(delta: float, margin: float, noise: Noise, n: int, m: int) -> str:
    runs = f" over {n} runs" if n > 1 else ""
    if noise.sigma is None:
        return f"{runs}: delta {delta:+.4f}, margin {margin:.4f} (the floor; noise not measured yet)"
    bound = "" if noise.used == noise.sigma else f", {noise.used:.4f} at {SIGMA_CONFIDENCE:.0%} confidence"
    return (f"{runs}: delta {delta:+.4f}, margin {margin:.4f} (noise sigma {noise.sigma:.4f} from {noise.dof} "
            f"dof{bound}; {n} vs {m} runs)")

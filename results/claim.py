"""The night's claim: the final frontier against the starting commit, measured side by side.

Every keep of the night was judged against the frontier of its moment, with a noise margin;
the claim asks the question a colleague asks in the morning: is the end better than the start,
by how much, and how sure are we? Both commits run again, N replicas each, interleaved on the
same lanes, and the gain is reported with a 95% confidence interval and a Welch t-test (unequal
variances: the start and the end need not be equally noisy).

Pure: values in, a `Claim` out. The engine runs the replicas (scheduler/engine/confirmation.py);
the store keeps each claim as a `claim` events row; `report`, the TUI and the bundle read it.
No scipy: Student's t distribution is the regularized incomplete beta function, computed here
by its continued fraction (Numerical Recipes' Lentz form), to ~1e-12."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field

from .metric import Metric

CONFIDENCE = 0.95
HOLDS_AT = 0.05  # the p-value under which the gain is said to hold
MIN_REPLICAS = 3  # per side, with noise: two leave the variance one degree of freedom
NOISELESS_REPLICAS = 2  # per side, when every replica measures the same (runs of fixed steps)
DEFAULT_MAX_REPLICAS = 8  # per side, when the noise asks for more
POWER_Z = 0.8416  # one-sided 80% power


@dataclass(frozen=True)
class Claim:
    """What the side-by-side runs say. `gain` is an improvement: positive is better, whichever
    way the metric points."""

    metric: str
    start: str  # commits
    frontier: str
    gpu_model: str | None
    start_runs: tuple[int, ...]  # experiment ids
    frontier_runs: tuple[int, ...]
    start_values: tuple[float, ...]
    frontier_values: tuple[float, ...]
    gain: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    dof: float | None
    confidence: float = CONFIDENCE
    heldout: dict | None = None  # the same comparison on the held-out split: {"gain", "ci_low", "ci_high", "p_value", "gap_sigma", "warning"}
    note: str = ""  # why there is no verdict (too few runs finished, ...)
    extra: dict = field(default_factory=dict)

    @property
    def holds(self) -> bool:
        return (self.gain is not None and self.ci_low is not None and self.ci_low > 0
                and self.p_value is not None and self.p_value < HOLDS_AT)

    def text(self) -> str:
        """One line for the end of the night, the header and `report`."""
        n, m = len(self.frontier_values), len(self.start_values)
        if self.gain is None:
            return f"the claim could not be measured: {self.note}"
        half = (self.ci_high - self.ci_low) / 2 if self.ci_high is not None and self.ci_low is not None else None
        spread = f" ± {half:.4f}" if half is not None else ""
        p = f"p = {self.p_value:.4f}" if self.p_value is not None and self.p_value >= 0.0001 else "p < 0.0001"
        figures = f"({self.confidence:.0%} CI; {n} vs {m} runs, {p})"
        if self.ci_low == self.ci_high:  # runs of fixed steps and seed: every replica measured the same
            spread, figures = "", f"({n} vs {m} runs, each side measuring the same every time: no noise)"
        if self.holds:
            return f"improved {self.metric} by {self.gain:.4f}{spread} {figures}"
        return (f"the gain did not hold: {self.metric} {'better' if self.gain > 0 else 'worse'} by "
                f"{abs(self.gain):.4f}{spread} {figures}, not distinguishable from no change")

    def short(self) -> str:
        """A few words for a screen's header: the gain and its interval, or that it did not hold."""
        if self.gain is None:
            return "claim not measured"
        if not self.holds:
            return f"claim did not hold ({self.gain:+.4f})"
        half = (self.ci_high - self.ci_low) / 2
        return f"claim {self.gain:+.4f}" + (f" ± {half:.4f}" if half else "")

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Claim:
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in d.items() if k in known}
        for key in ("start_runs", "frontier_runs", "start_values", "frontier_values"):
            values[key] = tuple(values.get(key) or ())
        return cls(**values)


@dataclass(frozen=True)
class Comparison:
    gain: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    dof: float | None
    se: float | None


def compare(start: list[float], frontier: list[float], metric: Metric, confidence: float = CONFIDENCE) -> Comparison:
    """Welch's comparison of the two samples, as an improvement of the frontier over the start."""
    if len(start) < 2 or len(frontier) < 2:  # no variance to test with
        return Comparison(None, None, None, None, None, None)
    gain = metric.improvement(statistics.fmean(frontier) - statistics.fmean(start))
    va, vb = statistics.variance(start) / len(start), statistics.variance(frontier) / len(frontier)
    se = math.sqrt(va + vb)
    if se == 0:  # every replica measured the same (runs of fixed steps and seed): the gain is exact
        return Comparison(gain, gain, gain, 0.0 if gain != 0 else 1.0, None, 0.0)
    dof = (va + vb) ** 2 / (va ** 2 / (len(start) - 1) + vb ** 2 / (len(frontier) - 1))
    t = gain / se
    half = t_quantile(1 - (1 - confidence) / 2, dof) * se
    p = 2 * t_sf(abs(t), dof)
    return Comparison(gain, gain - half, gain + half, p, dof, se)


def replicas(sigma: float | None, gain: float | None, cap: int = DEFAULT_MAX_REPLICAS,
             confidence: float = CONFIDENCE) -> int:
    """Runs per side so that a true gain of the size measured is shown (95% two-sided, 80%
    power): n = 2 (z + z_power)^2 sigma^2 / gain^2, between MIN_REPLICAS and `cap`."""
    if sigma == 0:
        return NOISELESS_REPLICAS
    if sigma is None or not gain or gain <= 0:  # no noise measured, or no gain to show: the most
        return cap
    z = normal_quantile(1 - (1 - confidence) / 2)
    n = math.ceil(2 * ((z + POWER_Z) * sigma / gain) ** 2)
    return max(MIN_REPLICAS, min(cap, n))


# -- distributions ------------------------------------------------------------------------------


def t_sf(t: float, dof: float) -> float:
    """P(T > t) for Student's t with `dof` degrees of freedom, t >= 0."""
    x = dof / (dof + t * t)
    return 0.5 * _betainc(dof / 2, 0.5, x)


def t_quantile(p: float, dof: float) -> float:
    """The t with P(T <= t) = p (p > 0.5), by bisection on t_sf."""
    target = 1 - p
    lo, hi = 0.0, 1.0
    while t_sf(hi, dof) > target:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_sf(mid, dof) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return (lo + hi) / 2


def normal_quantile(p: float) -> float:
    return statistics.NormalDist().inv_cdf(p)


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-14:
            break
    return h

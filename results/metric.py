"""The research metric: which number a run is judged by, which way is better, and the two
figures every view derives from it -- the change against the starting point ("Δ vs baseline")
and the running best. The engine, the terminal UI, the headless log and `report` all use this
one module, so the same experiment shows the same numbers everywhere."""

from __future__ import annotations

import enum
import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .records import SUMMARY_COLUMNS, Decision, Experiment, Kind, Status

_NAME = re.compile(r"^[A-Za-z_][\w.]*$")  # what a summary line's key may be (scheduler/runs/runparse.py)


class Direction(enum.StrEnum):
    LOWER = "lower"
    HIGHER = "higher"


@dataclass(frozen=True)
class Metric:
    name: str = "val_bpb"
    direction: Direction = Direction.LOWER

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"a metric is a summary key (letters, digits, '_', '.'), not {self.name!r}")
        object.__setattr__(self, "direction", Direction(self.direction))

    @classmethod
    def from_config(cls, config: dict | None) -> "Metric":
        """The metric a session recorded in the runs table (its `target`), else val_bpb."""
        target = (config or {}).get("target") or {}
        return cls(target.get("metric") or "val_bpb", Direction(target.get("direction") or "lower"))

    @property
    def label(self) -> str:
        return f"{self.name} ({self.direction.value} is better)"

    def value(self, exp: Experiment) -> float | None:
        """The experiment's measurement: a typed summary column, or a key the trainer printed."""
        raw = exp.summary.get(self.name, exp.extra.get(self.name))
        try:
            value = float(raw) if raw is not None else None
        except (TypeError, ValueError):
            return None
        return value if value is not None and math.isfinite(value) else None

    def score(self, value: float) -> float:
        """Lower is better, whatever the metric: what the noise rules compare."""
        return value if self.direction is Direction.LOWER else -value

    def unscore(self, score: float) -> float:
        """The value a score (a mean of scores, say) stands for."""
        return score if self.direction is Direction.LOWER else -score

    def better(self, value: float, than: float) -> bool:
        return self.score(value) < self.score(than)

    def improvement(self, delta: float) -> float:
        """A change (value minus reference) as a gain: positive is better."""
        return -delta if self.direction is Direction.LOWER else delta

    def best(self, experiments: Iterable[Experiment]) -> Experiment | None:
        """The best kept change (baselines measure, they do not win); ties go to the earlier."""
        kept = [(self.score(v), e.id, e) for e in experiments
                if e.decision is Decision.KEEP and e.kind is not Kind.BASELINE
                for v in [self.value(e)] if v is not None]
        return min(kept, key=lambda t: (t[0], t[1]))[2] if kept else None

    def sql_value(self) -> tuple[str, list]:
        """A SQL expression for the value in the experiments table, and its parameters."""
        if SUMMARY_COLUMNS.get(self.name) in (float, int):
            return f'"{self.name}"', []
        return "TRY_CAST(json_extract_string(extra, ?) AS DOUBLE)", [f'$."{self.name}"']


def starting_points(experiments: Iterable[Experiment], metric: Metric) -> dict[tuple[str | None, str | None], float]:
    """What "Δ vs baseline" is measured against: per research line (branch) and GPU model, the
    mean of the baseline runs of the line's first measured commit, the code it started from.
    Later baselines measure a moved frontier, and are not the starting point."""
    baselines = sorted((e for e in experiments if e.kind is Kind.BASELINE), key=lambda e: e.id)
    start: dict[str | None, str | None] = {}
    for e in baselines:
        start.setdefault(e.branch, e.commit)
    values: dict[tuple[str | None, str | None], list[float]] = {}
    for e in baselines:
        value = metric.value(e)
        if e.status is Status.OK and value is not None and e.commit == start[e.branch]:
            values.setdefault((e.branch, e.gpu_name), []).append(value)
    return {key: statistics.fmean(v) for key, v in values.items()}


def delta(exp: Experiment, starts: dict, metric: Metric) -> float | None:
    """The experiment's value minus its starting point's, on the same GPU model; the sign is
    the metric's own (for val_bpb, negative is better)."""
    value = metric.value(exp)
    reference = starts.get((exp.branch, exp.gpu_name))
    return None if value is None or reference is None else value - reference


def running_best(experiments: Sequence[Experiment], metric: Metric) -> list[float | None]:
    """For each experiment in the order given, the best value kept up to it (None before the
    first keep). A baseline is kept as it is measured, so the line starts at the start."""
    best: float | None = None
    out: list[float | None] = []
    for e in experiments:
        value = metric.value(e)
        if e.status is Status.OK and e.decision is Decision.KEEP and value is not None and (
                best is None or metric.better(value, best)):
            best = value
        out.append(best)
    return out

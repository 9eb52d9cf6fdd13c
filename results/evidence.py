"""What a researcher would look at before the next change: how one run went. Built from what
the log already holds (the experiment's row, its progress lines, its decision's numbers) and
the run's own log file; the same definition for the built-in agents (the `read_run` tool and
their history rows) and for external agents over MCP.

The diff is not in the log: the caller lends a function that makes it (git lives above the
store)."""

from __future__ import annotations

import json
import statistics
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .metric import Metric
from .queries import EXPERIMENT_COLUMNS, experiment_from_row, experiments
from .records import Decision, Experiment, Kind, Status

# The loss curve, compact: the progress line nearest each of these fractions of the budget.
CURVE_FRACTIONS = (0.1, 0.25, 0.5, 0.75, 1.0)
DIFF_CHARS = 6000  # a diff longer than this is cut, with a note saying so
LOG_TAIL_LINES = 25  # of a run that did not finish well


@dataclass(frozen=True)
class CurvePoint:
    fraction: float  # of the training budget, as the trainer reported it (pct / 100)
    step: int
    loss: float | None


@dataclass(frozen=True)
class RunEvidence:
    experiment_id: int
    kind: Kind
    lane: int
    description: str
    hypothesis: str | None
    status: Status
    metric: str  # the research metric's name
    value: float | None
    parent_value: float | None  # the mean of the parent commit's finished runs
    start_value: float | None  # the mean of the session's starting point's runs
    delta_vs_parent: float | None  # value - parent_value (negative is better for a lower-is-better metric)
    delta_vs_start: float | None
    decision: Decision | None
    rule: str | None  # which judging rule decided (beyond-noise, within-noise, ...)
    reason: str | None
    gain_sigma: float | None  # the measured gain over its reference, in units of the noise sigma
    margin_sigma: float | None  # the gain the rule asked for, in the same units
    sigma: float | None
    steps: int | None
    tokens_M: float | None
    training_seconds: float | None
    tok_per_s: float | None
    mfu_percent: float | None
    peak_vram_mb: float | None
    params_M: float | None
    gpu: str | None
    curve: tuple[CurvePoint, ...] = ()
    diff: str = ""
    log_tail: tuple[str, ...] = ()  # the last lines of its log, for a run that did not finish well
    error: str | None = None

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "curve"}  # StrEnums dump as their words
        out["curve"] = [point.__dict__ for point in self.curve]
        out["log_tail"] = list(self.log_tail)
        return out

    def text(self) -> str:
        """For a model to read: a few short lines, the numbers first, then the diff and the log."""
        def num(v, fmt=".6f"):
            return "-" if v is None else format(v, fmt)
        lines = [f"#{self.experiment_id} ({self.kind}, lane {self.lane}) {self.description}"]
        if self.hypothesis:
            lines.append(f"hypothesis: {self.hypothesis}")
        lines.append(f"status {self.status}; {self.metric} {num(self.value)}; vs its parent {num(self.delta_vs_parent, '+.6f')}"
                     f" (parent {num(self.parent_value)}); vs the start {num(self.delta_vs_start, '+.6f')}")
        if self.decision or self.rule:
            judged = f"decision {self.decision or 'pending'}" + (f" by rule {self.rule}" if self.rule else "")
            if self.gain_sigma is not None:
                judged += f"; gain {self.gain_sigma:+.2f} sigma"
                if self.margin_sigma is not None:
                    judged += f" (needed {self.margin_sigma:.2f})"
            if self.sigma is not None:
                judged += f"; sigma {self.sigma:.6f}"
            lines.append(judged + (f": {self.reason}" if self.reason else ""))
        lines.append(f"trained {num(self.training_seconds, '.1f')} s, {self.steps if self.steps is not None else '-'} steps, "
                     f"{num(self.tokens_M, '.1f')}M tokens, {num(self.tok_per_s, ',.0f')} tok/s, MFU {num(self.mfu_percent, '.1f')}%, "
                     f"peak VRAM {num(self.peak_vram_mb, ',.0f')} MB, {num(self.params_M, '.1f')}M params"
                     + (f" on {self.gpu}" if self.gpu else ""))
        if self.curve:
            lines.append("loss curve: " + ", ".join(
                f"{p.fraction:.0%} step {p.step} loss {num(p.loss, '.4f')}" for p in self.curve))
        if self.error:
            lines.append(f"error: {self.error}")
        if self.diff:
            lines.append("diff against its parent:\n" + self.diff)
        if self.log_tail:
            lines.append("the end of its log:\n" + "\n".join(self.log_tail))
        return "\n".join(lines)


def run_evidence(con, experiment_id: int, metric: Metric,
                 diff: Callable[[str, str], str] | None = None) -> RunEvidence | None:
    """The evidence of one experiment, or None when the log has no such experiment."""
    rows = con.execute(f"SELECT {EXPERIMENT_COLUMNS} FROM experiments WHERE id = ?", [experiment_id]).fetchall()
    if not rows:
        return None
    exp = experiment_from_row(rows[0])
    same_run = experiments(con, exp.run_id)
    value = metric.value(exp)
    parent_value = _mean_of(same_run, exp.parent_commit, metric)
    baselines = [e for e in same_run if e.kind is Kind.BASELINE and e.commit]
    start_value = _mean_of(same_run, baselines[0].commit, metric) if baselines else None
    if exp.kind is Kind.BASELINE:
        parent_value = _mean_of(same_run, exp.commit, metric)
    judged = _judgement(con, experiment_id)
    sigma = judged.get("sigma")  # the pooled estimate; the margin says what the rule asked beyond it
    sigma = sigma if isinstance(sigma, (int, float)) and sigma > 0 else None
    delta, margin = judged.get("delta"), judged.get("margin")
    summary = exp.summary
    tokens, seconds = summary.get("total_tokens_M"), summary.get("training_seconds")
    points = con.execute("SELECT step, pct, loss, tok_per_sec FROM metrics WHERE experiment_id = ? ORDER BY step",
                         [experiment_id]).fetchall()
    tok_per_s = tokens_per_second(summary) or _steady_rate(points)
    finished_badly = exp.status.finished and exp.status is not Status.OK
    return RunEvidence(
        experiment_id=experiment_id, kind=exp.kind, lane=exp.lane, description=exp.description,
        hypothesis=exp.hypothesis, status=exp.status, metric=metric.name, value=value,
        parent_value=parent_value, start_value=start_value,
        delta_vs_parent=_minus(value, parent_value), delta_vs_start=_minus(value, start_value),
        decision=exp.decision, rule=judged.get("rule"),
        reason=exp.decision_reason or judged.get("reason"),
        gain_sigma=delta / sigma if isinstance(delta, (int, float)) and sigma else None,
        margin_sigma=margin / sigma if isinstance(margin, (int, float)) and sigma else None, sigma=sigma,
        steps=summary.get("num_steps") if summary.get("num_steps") is not None else (points[-1][0] if points else None),
        tokens_M=tokens, training_seconds=seconds, tok_per_s=tok_per_s, mfu_percent=summary.get("mfu_percent"),
        peak_vram_mb=summary.get("peak_vram_mb"), params_M=summary.get("num_params_M"), gpu=exp.gpu_name,
        curve=_curve(points), diff=_capped_diff(exp, diff), error=exp.error,
        log_tail=tuple(tail(exp.log_path, LOG_TAIL_LINES)) if finished_badly else ())


def tokens_per_second(summary: dict) -> float | None:
    """Training throughput from a run's summary: its tokens over its training seconds."""
    tokens, seconds = summary.get("total_tokens_M"), summary.get("training_seconds")
    return tokens * 1e6 / seconds if tokens and seconds else None


def tail(path: str | None, lines: int) -> list[str]:
    """The last `lines` lines of a log, progress lines' carriage returns made into lines."""
    if not path:
        return []
    try:
        with Path(path).open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 64_000))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return list(deque((line for line in text.replace("\r", "\n").split("\n") if line.strip()), maxlen=lines))


def _mean_of(experiments: list[Experiment], commit: str | None, metric: Metric) -> float | None:
    values = [metric.value(e) for e in experiments if commit and e.commit == commit and e.status is Status.OK]
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _minus(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def _judgement(con, experiment_id: int) -> dict:
    """The numbers of the last decision (or confirmation) made on it: rule, delta, margin, sigma."""
    rows = con.execute("SELECT detail FROM events WHERE experiment_id = ? AND kind LIKE 'decision:%' "
                       "ORDER BY id DESC LIMIT 1", [experiment_id]).fetchall()
    if not rows or rows[0][0] is None:
        return {}
    detail = json.loads(rows[0][0]) if isinstance(rows[0][0], str) else rows[0][0]
    return detail if isinstance(detail, dict) else {}


def _curve(points: list[tuple]) -> tuple[CurvePoint, ...]:
    """The progress line nearest each fraction of the budget (each line at most once)."""
    with_pct = [(step, pct / 100, loss) for step, pct, loss, _ in points if pct is not None]
    if not with_pct:
        return ()
    chosen: dict[int, CurvePoint] = {}
    for fraction in CURVE_FRACTIONS:
        step, at, loss = min(with_pct, key=lambda p: abs(p[1] - fraction))
        chosen.setdefault(step, CurvePoint(round(at, 3), step, loss))
    return tuple(chosen.values())


def _steady_rate(points: list[tuple]) -> float | None:
    rates = [rate for *_, rate in points if rate]
    return statistics.median(rates[len(rates) // 2:]) if rates else None


def _capped_diff(exp: Experiment, diff: Callable[[str, str], str] | None) -> str:
    if diff is None or not exp.parent_commit or not exp.commit or exp.parent_commit == exp.commit:
        return ""
    try:
        text = diff(exp.parent_commit, exp.commit)
    except Exception:  # noqa: BLE001 - a commit gone from the repository leaves the rest readable
        return "(the diff could not be made: its commits are not in this repository)"
    if len(text) > DIFF_CHARS:
        text = text[:DIFF_CHARS] + f"\n... (cut at {DIFF_CHARS} characters of {len(text)})"
    return text

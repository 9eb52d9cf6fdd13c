"""What external agents may ask about the research, kept from the engine's events.

The engine calls this view as one more sink, on its own thread; the MCP server reads it from
another, so every read and write holds the lock, and reads hand out plain dicts. It is seeded
from the log at start, so a session resumed after a crash can still answer for experiments an
earlier session started (and follows a re-run to its result)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from results.constraints import Constraint
from results.evidence import tail, tokens_per_second
from results.metric import Metric
from results.records import Experiment, Kind, Status
from scheduler.engine import events
from scheduler.engine.noise import Ruling

FINAL = (Ruling.KEEP, Ruling.DISCARD)
LOG_TAIL_LINES = 30


@dataclass
class LaneInfo:
    lane: int
    gpu: str
    state: str = "idle"
    detail: str = ""
    paused: bool = False
    running: int | None = None  # the experiment training on it


@dataclass
class _Verdict:
    decision: str
    reason: str
    delta: float | None = None
    margin: float | None = None
    sigma: float | None = None

    @property
    def gain_sigma(self) -> float | None:
        return self.delta / self.sigma if self.delta is not None and self.sigma else None


@dataclass
class _State:
    frontier: str
    lanes: dict[int, LaneInfo]
    experiments: dict[int, Experiment] = field(default_factory=dict)
    verdicts: dict[int, _Verdict] = field(default_factory=dict)
    progress: dict[int, dict] = field(default_factory=dict)
    frontier_value: float | None = None
    noise: dict | None = None
    spend_usd: float = 0.0
    finished: str | None = None


class LabView:
    def __init__(self, tag: str, lanes: list[tuple[int, str]], frontier: str, metric: Metric, *,
                 budget_s: float | None, max_experiments: int | None, max_cost: float | None,
                 constraints: tuple[Constraint, ...] = ()):
        self.tag, self.metric, self.constraints = tag, metric, constraints
        self.budget_s, self.max_experiments, self.max_cost = budget_s, max_experiments, max_cost
        self._lock = threading.Lock()
        self._s = _State(frontier, {lane: LaneInfo(lane, gpu) for lane, gpu in lanes})
        self._submissions: dict[str, int] = {}  # submission id -> experiment id
        self._changed = threading.Condition(self._lock)

    # -- fed by the engine --------------------------------------------------------------------------

    def started(self, frontier: str) -> None:
        """The engine exists: its frontier, before any event has moved it."""
        with self._lock:
            self._s.frontier = frontier

    def seed(self, past: list[Experiment]) -> None:
        """The research line's experiments so far (a resumed session's included)."""
        with self._lock:
            for exp in past:
                self._take(exp)
                if exp.decision is not None:
                    self._s.verdicts[exp.id] = _Verdict(exp.decision.value, exp.decision_reason or "")

    def __call__(self, event) -> None:
        with self._changed:
            s = self._s
            match event:
                case events.LaneChanged(lane=n, state=state, detail=detail, paused=paused):
                    if n in s.lanes:
                        info = s.lanes[n]
                        info.state, info.detail, info.paused = state.value, detail, paused
                case events.ProposalReady(experiment=exp):
                    self._take(exp)
                case events.RunStarted(lane=n, experiment=exp):
                    self._take(exp)
                    if n in s.lanes:
                        s.lanes[n].running = exp.id
                case events.RunProgress(experiment_id=i, progress=p):
                    s.progress[i] = {"step": p.step, "percent": p.pct, "loss": p.loss, "remaining_s": p.remaining_s}
                    return  # high rate, and nobody waits on progress
                case events.RunFinished(lane=n, experiment=exp):
                    self._take(exp)
                    if n in s.lanes and s.lanes[n].running == exp.id:
                        s.lanes[n].running = None
                case events.Decided(experiment_id=i, decision=d, reason=r, delta=delta, margin=margin, sigma=sigma):
                    if d in FINAL:
                        s.verdicts[i] = _Verdict(d.value, r, delta, margin, sigma)
                case events.FrontierAdvanced(commit=c, value=v):
                    s.frontier = c
                    s.frontier_value = v
                case events.NoiseEstimated(gpu_model=m, sigma=sigma, dof=dof, margin=margin):
                    s.noise = {"gpu_model": m, "sigma": sigma, "dof": dof, "margin": margin}
                case events.LlmCallFinished(cost_usd=c):
                    s.spend_usd += c or 0.0
                case events.Finished(reason=r):
                    s.finished = r
                case _:
                    return
            self._changed.notify_all()

    def _take(self, exp: Experiment) -> None:
        self._s.experiments[exp.id] = exp
        submission = exp.notes.get("submission") if exp.notes else None
        if submission:
            self._submissions[submission] = exp.id

    # -- read by the server -------------------------------------------------------------------------

    def status(self, open_lanes: dict[int, str | None]) -> dict:
        with self._lock:
            s = self._s
            done = [e for e in s.experiments.values() if e.status.finished and e.status is not Status.NOT_RUN]
            lanes = []
            for info in s.lanes.values():
                running = s.experiments.get(info.running) if info.running is not None else None
                lanes.append({
                    "lane": info.lane, "gpu": info.gpu, "state": info.state, "detail": info.detail,
                    "paused": info.paused,
                    "waiting_for_agent": info.lane in open_lanes and open_lanes[info.lane] is None,
                    "claimed_by": open_lanes.get(info.lane),
                    "running": None if running is None else {
                        "experiment_id": running.id, "kind": running.kind.value, "description": running.description,
                        "progress": s.progress.get(running.id)}})
            return {
                "tag": self.tag, "metric": self.metric.name, "direction": self.metric.direction.value,
                "frontier": {"commit": s.frontier, self.metric.name: self._frontier_value()},
                "noise": s.noise, "budget_s": self.budget_s,
                "experiments": {"done": len(done), "kept": sum(1 for e in s.experiments.values()
                                                               if e.kind is Kind.PROPOSAL
                                                               and s.verdicts.get(e.id, _Verdict("", "")).decision
                                                               == "keep"),
                                "max": self.max_experiments},
                "constraints": {c.key: c.ceiling for c in self.constraints},
                "spend_usd": round(s.spend_usd, 4), "max_cost_usd": self.max_cost,
                "lanes": lanes, "finished": s.finished}

    def _frontier_value(self) -> float | None:
        s = self._s
        if s.frontier_value is not None:
            return s.frontier_value
        values = [self.metric.value(e) for e in s.experiments.values()
                  if e.commit == s.frontier and e.status is Status.OK]
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    def frontier(self) -> str:
        with self._lock:
            return self._s.frontier

    def experiment_for(self, submission: str, timeout_s: float) -> int | None:
        """The experiment a submission became, once the engine has queued it."""
        with self._changed:
            self._changed.wait_for(lambda: submission in self._submissions, timeout_s)
            return self._submissions.get(submission)

    def known(self, experiment_id: int) -> bool:
        with self._lock:
            return experiment_id in self._s.experiments

    def result(self, experiment_id: int) -> dict | None:
        """The judged result of an experiment (following a re-run after a crash of the
        supervisor), or None while it is not judged."""
        with self._lock:
            s = self._s
            current = self._latest(experiment_id)
            exp = s.experiments.get(current)
            verdict = s.verdicts.get(current) or s.verdicts.get(experiment_id)
            if exp is None:
                return None
            final = verdict is not None or exp.status is Status.REJECTED
            if not final:
                return None
            return self._describe(exp, verdict, experiment_id)

    def progress(self, experiment_id: int) -> dict:
        with self._lock:
            s = self._s
            current = self._latest(experiment_id)
            exp = s.experiments.get(current)
            return {"experiment_id": experiment_id, "judged": False,
                    "status": exp.status.value if exp else "unknown",
                    "ran_as": current if current != experiment_id else None,
                    "progress": s.progress.get(current)}

    def _latest(self, experiment_id: int) -> int:
        """An experiment interrupted by a supervisor's crash runs again as a new one."""
        current, seen = experiment_id, {experiment_id}
        while True:
            nxt = max((e.id for e in self._s.experiments.values() if e.rerun_of == current), default=None)
            if nxt is None or nxt in seen:
                return current
            seen.add(nxt)
            current = nxt

    def _describe(self, exp: Experiment, verdict: _Verdict | None, asked: int) -> dict:
        value = self.metric.value(exp)
        out = {"experiment_id": asked, "judged": True, "ran_as": exp.id if exp.id != asked else None,
               "status": exp.status.value, self.metric.name: value,
               "decision": verdict.decision if verdict else "rejected",
               "reason": verdict.reason if verdict else (exp.error or ""),
               "delta_vs_reference": verdict.delta if verdict else None,
               "margin": verdict.margin if verdict else None, "description": exp.description}
        if exp.status not in (Status.OK, Status.REJECTED):
            out["error"] = exp.error
            out["log_tail"] = tail(exp.log_path, LOG_TAIL_LINES)
        return out

    def history(self, *, lane: int | None = None, decision: str | None = None, text: str | None = None,
                limit: int = 30) -> list[dict]:
        with self._lock:
            s = self._s
            rows = []
            for exp in sorted(s.experiments.values(), key=lambda e: e.id, reverse=True):
                verdict = s.verdicts.get(exp.id)
                if lane is not None and exp.lane != lane:
                    continue
                if decision is not None and (verdict.decision if verdict else None) != decision:
                    continue
                if text and text.lower() not in f"{exp.description}\n{exp.hypothesis}".lower():
                    continue
                rows.append({"experiment_id": exp.id, "lane": exp.lane, "kind": exp.kind.value,
                             "description": exp.description, "hypothesis": exp.hypothesis, "agent": exp.agent,
                             "status": exp.status.value, self.metric.name: self.metric.value(exp),
                             "decision": verdict.decision if verdict else None,
                             "reason": verdict.reason if verdict else None,
                             "gain_sigma": verdict.gain_sigma if verdict else None,
                             "steps": exp.summary.get("num_steps"), "tok_per_s": tokens_per_second(exp.summary),
                             "peak_vram_mb": exp.summary.get("peak_vram_mb"),
                             "parent": exp.parent_commit, "commit": exp.commit})
                if len(rows) >= limit:
                    break
            return rows

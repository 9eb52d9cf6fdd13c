"""Where the engine records what happens: every new experiment, result, decision and notice goes
into the research state, the store and the consumers' events through here, in that order, on
the supervisor's thread. Decisions and notices may wait for the next launch (`later`): a result
is written at once, and a lane's GPU does not wait for the rest."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Callable

from agents.proposer import PastExperiment
from results.evidence import tokens_per_second
from results.records import Decision, DecisionSource, Event as StoredEvent, Experiment, Kind, Status
from results.store import Store, utcnow

from . import events
from .noise import GreedyPolicy, Noise, Policy, Rule, Ruling, Verdict, throughput
from .state import Lane, LaneState, ResearchState

log = logging.getLogger("autoresearch.supervisor")


class Ledger:
    def __init__(self, state: ResearchState, store: Store, branch: str, keep_commit: Callable[[int, str], None],
                 sink: Callable[[events.Event], None], observe: Callable[[Experiment, Rule | None], None],
                 policy: Policy | GreedyPolicy, drafting_detail: str = ""):
        self.state, self.store, self.branch, self.policy = state, store, branch, policy
        self.drafting_detail = drafting_detail  # what a proposing lane says: "waiting for an agent" for external ones
        self.keep_commit = keep_commit  # (id, commit): a ref per experiment, so git never collects its commit
        self._sink = sink
        self._observe = observe  # told of every decision: a proposer that learns, the plateau count
        self._deferred: list[tuple[Callable, tuple]] = []
        self._noise: dict[str, Noise] = {}  # the last estimate told, per GPU model

    # -- consumers -------------------------------------------------------------------------------

    def emit(self, event) -> None:
        try:
            self._sink(event)
        except Exception:  # noqa: BLE001 - a broken consumer must not stop the research
            log.exception("event consumer failed on %s", events.event_name(event))

    def notice(self, level: events.Level, message: str, lane: int | None = None,
               topic: events.Topic | None = None) -> None:
        self.emit(events.Notice(level, message, lane, topic))
        self.later(self.store.add_event, StoredEvent(utcnow(), self.state.run_id, f"notice:{level.value}", lane=lane,
                                                     detail={"message": message,
                                                             **({"topic": topic.value} if topic else {})}))

    def lane_changed(self, lane: Lane, detail: str = "") -> None:
        if not detail and lane.state is LaneState.PROPOSING:
            detail = self.drafting_detail
        self.emit(events.LaneChanged(lane.index, lane.state, detail, lane.paused))

    def event(self, kind: str, source: DecisionSource, lane: int | None = None, experiment_id: int | None = None,
              detail: dict | None = None, *, now: bool = False) -> None:
        """An events row (an override, a promotion); `now` when it must not wait."""
        row = StoredEvent(utcnow(), self.state.run_id, kind, source.value, lane, experiment_id, detail or {})
        if now:
            self.store.add_event(row)
        else:
            self.later(self.store.add_event, row)

    # -- experiments ------------------------------------------------------------------------------

    def new_experiment(self, template: Experiment) -> Experiment:
        """Give a planned experiment its row (and id) and keep its commit reachable."""
        exp = self.store.add_experiment(replace(template, run_id=self.state.run_id, branch=self.branch))
        if exp.commit:
            self.keep_commit(exp.id, exp.commit)
        self.state.experiments[exp.id] = exp
        return exp

    def save(self, exp: Experiment) -> None:
        self.state.experiments[exp.id] = exp
        self.store.save_experiment(exp)

    def learn(self, exp: Experiment) -> None:
        """Fold a finished experiment into the measurements and the proposers' history."""
        state = self.state
        if exp.status is Status.REJECTED and exp.commit is None:
            return
        value = state.value(exp)
        if exp.status is Status.OK and value is not None and exp.commit and exp.gpu_name:
            state.measurements.add(exp.commit, exp.gpu_name, state.metric.score(value), throughput(exp.summary),
                                   selected=exp.kind in (Kind.PROPOSAL, Kind.VERIFICATION))
            self._noise_changed(exp.gpu_name)
        if exp.kind is Kind.PROPOSAL and exp.status.finished:
            state.history.append(PastExperiment(exp.description, exp.change, value, exp.status.value,
                                                exp.decision.value if exp.decision else None, dict(exp.notes),
                                                exp.parent_commit, experiment_id=exp.id,
                                                steps=exp.summary.get("num_steps"),
                                                tok_per_s=tokens_per_second(exp.summary),
                                                peak_vram_mb=exp.summary.get("peak_vram_mb")))

    def decide(self, exp: Experiment, decision: Decision, source: DecisionSource, reason: str, by: str = "",
               rule: Rule | None = None, verdict: Verdict | None = None) -> Experiment:
        exp = replace(exp, decision=decision, decision_source=source, decision_reason=reason)
        self.state.experiments[exp.id] = exp
        rule = rule or (Rule.PERSON if source is DecisionSource.USER else None)
        if exp.kind in (Kind.PROPOSAL, Kind.VERIFICATION) and exp.parent_commit and verdict is not None:
            self.state.judged_against[exp.parent_commit] += 1  # the frontier earns more replicas
        self.later(self.store.record_decision, exp.id, decision, source, reason, self.state.run_id, by,
                   judgement(rule, verdict))
        self.emit(decided(exp.id, Ruling(decision.value), source, reason, rule, verdict))
        history = self.state.history
        for i, past in enumerate(history):  # proposers learn from decisions, not just results
            if past.change is not None and past.change == exp.change and past.decision is None:
                history[i] = replace(past, decision=decision.value, gain_sigma=gain_in_sigma(verdict))
        self._observe(exp, rule)
        return exp

    def confirm(self, experiment_id: int, rule: Rule, reason: str, verdict: Verdict | None) -> None:
        """Not decided yet: it runs again. Told, and kept in the events table like a decision."""
        self.emit(decided(experiment_id, Ruling.CONFIRM, DecisionSource.AUTO, reason, rule, verdict))
        self.event("decision:confirm", DecisionSource.AUTO, experiment_id=experiment_id,
                   detail={"reason": reason, **judgement(rule, verdict)})

    def _noise_changed(self, model: str) -> None:
        noise = self.state.measurements.noise(model)
        if noise == self._noise.get(model):
            return
        self._noise[model] = noise
        frontier_runs = max(1, self.state.measurements.count(self.state.frontier, model))
        margin = self.policy.margin(noise, 1, frontier_runs)
        self.emit(events.NoiseEstimated(model, noise.sigma, noise.dof, noise.used, margin))
        self.event("noise", DecisionSource.AUTO, detail={"gpu_model": model, "sigma": noise.sigma, "dof": noise.dof,
                                                         "sigma_used": noise.used, "margin": margin})

    def noise_told(self) -> dict:
        """The last noise estimate per GPU model, as numbers (the `finished` event carries it)."""
        return {model: {"sigma": n.sigma, "dof": n.dof, "sigma_used": n.used} for model, n in self._noise.items()}

    def reject(self, exp: Experiment, why: str) -> Experiment:
        """A proposal that will never run: recorded, and learnt from."""
        rejected = replace(exp, status=Status.REJECTED, finished_at=utcnow(), error=why)
        self.save(rejected)
        self.learn(rejected)
        return rejected

    # -- writes that can wait ----------------------------------------------------------------------

    def later(self, write: Callable, *args) -> None:
        self._deferred.append((write, args))

    def write_deferred(self) -> None:
        writes, self._deferred = self._deferred, []
        for write, args in writes:
            try:
                write(*args)
            except Exception:  # noqa: BLE001 - ours; the traceback goes to the log
                log.exception("writing %s to the store failed", getattr(write, "__name__", write))


def decided(experiment_id: int, ruling: Ruling, source: DecisionSource, reason: str, rule: Rule | None,
            verdict: Verdict | None) -> events.Decided:
    noise = verdict.noise if verdict is not None else None
    return events.Decided(experiment_id, ruling, source, reason,
                          verdict.delta if verdict is not None else None,
                          verdict.margin if verdict is not None else None, rule,
                          noise.sigma if noise is not None else None, noise.dof if noise is not None else None)


def judgement(rule: Rule | None, verdict: Verdict | None) -> dict:
    """What a decision's events row keeps beside its reason: the rule, and the numbers."""
    detail: dict = {"rule": rule.value} if rule is not None else {}
    if verdict is not None:
        detail.update(delta=verdict.delta, margin=verdict.margin)
        if verdict.noise is not None:
            detail.update(sigma=verdict.noise.sigma, dof=verdict.noise.dof, sigma_used=verdict.noise.used)
    return detail


def gain_in_sigma(verdict: Verdict | None) -> float | None:
    """A judged run's gain over its reference in units of the pooled noise estimate (sigma)."""
    noise = verdict.noise if verdict is not None else None
    sigma = noise.sigma if noise is not None else None
    return verdict.delta / sigma if verdict is not None and verdict.delta is not None and sigma else None


"""The judging rules: a finished experiment and the research state in, what should happen out.

`Judge.result` touches no git, thread or store and changes nothing: it returns actions
(decide this, queue that run, promote that winner, the frontier fails), which the supervisor
applies in order (scheduler/supervisor.py) -- the moving of the frontier itself, with its git
work, is scheduler/promotion.py. So every rule can be tested on a state built by hand
(tests/test_judge.py) and driven by a simulation."""

from __future__ import annotations

from dataclasses import dataclass

from results.records import Decision, Experiment, Kind, Status

from .noise import Policy, Ruling
from .state import ResearchState

BASELINE_FAILURES_BEFORE_STOPPING = 2


@dataclass(frozen=True)
class Decide:
    experiment_id: int
    decision: Decision
    reason: str


@dataclass(frozen=True)
class Confirm:
    """A win too close to the margin to tell: announced, and run again (a `Queue` follows)."""

    experiment_id: int
    reason: str
    delta: float | None
    margin: float | None


@dataclass(frozen=True)
class Queue:
    """A run to make, ahead of everything queued: a confirmation, or a reference baseline."""

    experiment: Experiment  # a template: the ledger gives it its row and id


@dataclass(frozen=True)
class Promote:
    """A winner: the frontier should move to it."""

    experiment_id: int
    reason: str


@dataclass(frozen=True)
class FrontierFailed:
    """The unmodified frontier failed to run. Once may be bad luck (a busy GPU); at
    BASELINE_FAILURES_BEFORE_STOPPING times the starting point itself is broken, and every
    further run would be wasted: `stop`."""

    experiment_id: int
    key: tuple[str, str]  # (commit, GPU model)
    failures: int
    stop: bool


Action = Decide | Confirm | Queue | Promote | FrontierFailed


class Judge:
    def __init__(self, policy: Policy):
        self.policy = policy

    def result(self, state: ResearchState, exp: Experiment) -> list[Action]:
        """What should follow a finished experiment (already in `state`, its measurement folded
        into `state.measurements`)."""
        if exp.decision is not None:
            return []  # a person already decided (discarded it while it ran)
        if exp.status is not Status.OK:
            actions: list[Action] = [Decide(exp.id, Decision.DISCARD, f"{exp.status.value}: {exp.error or 'failed'}")]
            if exp.kind is Kind.BASELINE and exp.status is not Status.KILLED:
                key = (exp.commit or "", exp.gpu_name or "")
                failures = state.baseline_failures.get(key, 0) + 1
                actions.append(FrontierFailed(exp.id, key, failures, failures >= BASELINE_FAILURES_BEFORE_STOPPING))
            return actions
        if exp.kind is Kind.BASELINE:
            actions = [Decide(exp.id, Decision.KEEP, "baseline: the frontier as it is")]
            waiting = state.experiments.get(exp.reference_for) if exp.reference_for is not None else None
            if waiting is not None and waiting.decision is None:
                actions += self.result(state, waiting)  # its reference is measured now
            return actions
        # A confirmation or a rerun is judged together with the experiment it repeats.
        original = state.original(exp)
        model = exp.gpu_name or ""
        reference = state.reference(original.parent_commit, model)
        if reference is None:
            # Its parent was never measured on this GPU model: measure it, then judge again.
            parent = original.parent_commit
            return [Queue(Experiment(run_id=state.run_id, lane=-1, kind=Kind.BASELINE, commit=parent,
                                     parent_commit=parent, gpu_name=model, reference_for=exp.id,
                                     description=f"baseline: {(parent or '')[:7]} on {model} (reference for #{exp.id})"))]
        verdict = self.policy.judge(state.measurements.of(original.commit, model), reference,
                                    state.measurements.sigma(model))
        if verdict.action is Ruling.CONFIRM:
            return [Confirm(original.id, verdict.reason, verdict.delta, verdict.margin),
                    Queue(Experiment(run_id=state.run_id, lane=-1, kind=Kind.CONFIRM, commit=original.commit,
                                     parent_commit=original.parent_commit, gpu_name=model,
                                     hypothesis=original.hypothesis, agent=original.agent, confirms=original.id,
                                     change=original.change,
                                     description=f"confirm #{original.id}: {original.description}"))]
        actions = []
        if exp is not original:
            actions.append(Decide(exp.id, Decision(verdict.action.value), f"{verdict.reason} (with #{original.id})"))
        if verdict.action is Ruling.KEEP:
            actions.append(Promote(original.id, verdict.reason))
        else:
            actions.append(Decide(original.id, Decision.DISCARD, verdict.reason))
        return actions

    def beats_frontier(self, state: ResearchState, exp: Experiment) -> bool:
        """Whether the experiment, as measured, beats the current frontier's own measurement by
        the margin (on its GPU model): a winner that conflicts with a moved frontier may then
        take its place."""
        model = exp.gpu_name or ""
        frontier = state.reference(state.frontier, model)
        runs = state.measurements.of(exp.commit, model) if exp.commit else []
        if frontier is None or not runs:
            return False
        return self.policy.judge(runs, frontier, state.measurements.sigma(model)).action is Ruling.KEEP

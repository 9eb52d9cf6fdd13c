"""The judging rules: a finished experiment and the research state in, what should happen out.

`Judge.result` touches no git, thread or store and changes nothing: it returns actions
(decide this, queue that run, promote that winner, the frontier fails), which the supervisor
applies in order (scheduler/engine/supervisor.py) -- the moving of the frontier itself, with its git
work, is scheduler/engine/promotion.py. So every rule can be tested on a state built by hand
(tests/test_judge.py) and driven by a simulation."""

from __future__ import annotations

from dataclasses import dataclass

from results.constraints import Constraint, broken
from results.records import Decision, Experiment, Kind, Status

from .noise import DISTURBED_BELOW, MAX_FRONTIER_RUNS, GreedyPolicy, Policy, Rule, Ruling, Verdict, throughput
from .state import ResearchState

BASELINE_FAILURES_BEFORE_STOPPING = 2


@dataclass(frozen=True)
class Decide:
    experiment_id: int
    decision: Decision
    rule: Rule
    reason: str
    verdict: Verdict | None = None  # the numbers behind it, when noise decided


@dataclass(frozen=True)
class Confirm:
    """Not decided yet: announced, and run again (a `Queue` follows)."""

    experiment_id: int
    rule: Rule  # RETEST or DISTURBED
    reason: str
    verdict: Verdict | None = None


@dataclass(frozen=True)
class Queue:
    """A run to make, ahead of everything queued: a confirmation, or a reference baseline."""

    experiment: Experiment  # a template: the ledger gives it its row and id


@dataclass(frozen=True)
class Promote:
    """A winner: the frontier should move to it."""

    experiment_id: int
    reason: str
    verdict: Verdict | None = None


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
    def __init__(self, policy: Policy | GreedyPolicy, constraints: tuple[Constraint, ...] = ()):
        self.policy = policy
        self.constraints = constraints  # ceilings a change must respect (results/constraints.py)

    def result(self, state: ResearchState, exp: Experiment) -> list[Action]:
        """What should follow a finished experiment (already in `state`, its measurement folded
        into `state.measurements`)."""
        if exp.decision is not None:
            return []  # a person already decided (discarded it while it ran)
        if exp.kind is Kind.CLAIM:
            return []  # measured for the night's claim (confirmation.py), not judged
        if exp.status is not Status.OK:
            actions: list[Action] = [Decide(exp.id, Decision.DISCARD, Rule.FAILED,
                                            f"{exp.status.value}: {exp.error or 'failed'}")]
            if exp.kind is Kind.BASELINE and exp.status is not Status.KILLED:
                key = (exp.commit or "", exp.gpu_name or "")
                failures = state.baseline_failures.get(key, 0) + 1
                actions.append(FrontierFailed(exp.id, key, failures, failures >= BASELINE_FAILURES_BEFORE_STOPPING))
            return actions
        why = broken(exp, self.constraints) if exp.kind is not Kind.BASELINE else None
        if why is not None:  # whatever its metric says: a change must fit the machine and the rules
            original = state.original(exp)  # a confirmation past a limit settles what it confirms
            return [Decide(e.id, Decision.DISCARD, Rule.CONSTRAINT, f"constraint: {why}")
                    for e in ({exp.id: exp, original.id: original}.values()) if e.decision is None]
        if exp.kind is Kind.BASELINE:
            slow = self._disturbed_among_replicas(state, exp)
            reason = "baseline: the frontier as it is" + (f" ({slow}; set aside and run again)" if slow else "")
            actions = [Decide(exp.id, Decision.KEEP, Rule.BASELINE, reason)]
            waiting = state.experiments.get(exp.reference_for) if exp.reference_for is not None else None
            if waiting is not None and waiting.decision is None:
                actions += self.result(state, waiting)  # its reference is measured now
            return actions
        # A confirmation or a rerun is judged together with the experiment it repeats.
        original = state.original(exp)
        model = exp.gpu_name or ""
        reference = state.measurements.of(original.parent_commit, model) if original.parent_commit else []
        if not reference:
            # Its parent was never measured on this GPU model: measure it, then judge again.
            return [self._reference_run(state, original.parent_commit, model, exp.id)]
        slow = self._disturbed_against_parent(state, original, model)
        if slow:
            return self.again(state, original, Rule.DISTURBED, f"{slow}: the machine, not the change; running it "
                                                                f"again", None)
        runs = state.measurements.of(original.commit, model)
        verdict = self.policy.judge(runs, reference, state.measurements.noise(model))
        attempts = state.measurements.attempts(original.commit, model)
        if verdict.action is Ruling.CONFIRM and len(reference) < min(len(runs), MAX_FRONTIER_RUNS):
            # The reference is now the less certain side of the difference: measure it again.
            return [Confirm(original.id, verdict.rule, f"{verdict.reason}; measuring its reference again", verdict),
                    self._reference_run(state, original.parent_commit, model, exp.id)]
        if verdict.action is Ruling.CONFIRM and attempts <= self.policy.max_runs:
            return self.again(state, original, verdict.rule, f"{verdict.reason}; running it again", verdict)
        if verdict.action is Ruling.CONFIRM:  # disturbed again and again: noise has its say
            verdict = Verdict(Ruling.DISCARD, Rule.WITHIN_NOISE, f"{verdict.reason}; not decided after {attempts} runs",
                              verdict.delta, verdict.margin, verdict.noise)
        # Its confirmations share its fate, each said with the numbers of the final judgement.
        actions: list[Action] = [Decide(run.id, Decision(verdict.action.value), verdict.rule,
                                        f"{verdict.reason} (with #{original.id})", verdict)
                                 for run in state.experiments.values()
                                 if run.confirms == original.id and run.decision is None and run.status is Status.OK]
        if verdict.action is Ruling.KEEP:
            actions.append(Promote(original.id, verdict.reason, verdict))
        else:
            actions.append(Decide(original.id, Decision.DISCARD, verdict.rule, verdict.reason, verdict))
        return actions

    def against_frontier(self, state: ResearchState, exp: Experiment) -> Verdict | None:
        """How the experiment, as measured, compares with the current frontier's own runs (on
        its GPU model): a winner that conflicts with a moved frontier takes its place only if it
        beats it; None when either was never measured there."""
        model = exp.gpu_name or ""
        frontier = state.measurements.of(state.frontier, model)
        runs = state.measurements.of(exp.commit, model) if exp.commit else []
        if not frontier or not runs:
            return None
        verdict = self.policy.judge(runs, frontier, state.measurements.noise(model))
        if verdict.action is Ruling.CONFIRM and state.measurements.attempts(exp.commit, model) > self.policy.max_runs:
            return Verdict(Ruling.DISCARD, Rule.WITHIN_NOISE, verdict.reason, verdict.delta, verdict.margin,
                           verdict.noise)
        return verdict

    @staticmethod
    def again(state: ResearchState, original: Experiment, rule: Rule, reason: str,
              verdict: Verdict | None) -> list[Action]:
        """Run the experiment again as it is, ahead of the queue, and say why."""
        return [Confirm(original.id, rule, reason, verdict),
                Queue(Experiment(run_id=state.run_id, lane=-1, kind=Kind.CONFIRM, commit=original.commit,
                                 parent_commit=original.parent_commit, gpu_name=original.gpu_name,
                                 hypothesis=original.hypothesis, agent=original.agent, confirms=original.id,
                                 change=original.change, description=f"confirm #{original.id}: {original.description}"))]

    @staticmethod
    def _reference_run(state: ResearchState, parent: str | None, model: str, waiting: int) -> Queue:
        """A run of the parent as it is, after which the waiting experiment is judged again."""
        return Queue(Experiment(run_id=state.run_id, lane=-1, kind=Kind.BASELINE, commit=parent, parent_commit=parent,
                                gpu_name=model, reference_for=waiting,
                                description=f"baseline: {(parent or '')[:7]} on {model} (reference for #{waiting})"))

    @staticmethod
    def _disturbed_against_parent(state: ResearchState, original: Experiment, model: str) -> str | None:
        """A first run of new code that trained far slower than its parent's runs ever did: the
        machine was loaded, and the result says nothing about the change. Once the code has
        run twice, its own runs are compared with each other instead (Measurements.trusted)."""
        if not original.commit or state.measurements.attempts(original.commit, model) != 1:
            return None
        own = state.measurements.best_throughput(original.commit, model)
        parent = state.measurements.best_throughput(original.parent_commit or "", model)
        if own is None or parent is None or own >= DISTURBED_BELOW * parent:
            return None
        return f"it trained at {own / parent:.0%} of its parent's throughput"

    @staticmethod
    def _disturbed_among_replicas(state: ResearchState, exp: Experiment) -> str | None:
        model = exp.gpu_name or ""
        own = throughput(exp.summary)
        best = state.measurements.best_throughput(exp.commit or "", model)
        if own is None or best is None or own >= DISTURBED_BELOW * best:
            return None
        return f"disturbed: it trained at {own / best:.0%} of the fastest replica's throughput"

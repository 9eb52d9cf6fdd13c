"""Moving the frontier: the git side of a keep, and of a person's undo.

A winner drafted on the frontier fast-forwards it. One drafted on a frontier that has moved
since is replayed on top (cherry-pick) and measured again there before it is trusted; when it
conflicts but, as it is, beats the new frontier's own measurement, the frontier takes its code
whole, and when it is too close to tell it is run again. The branch only ever moves forward, except when a person discards the frontier's own
commit. Runs on the supervisor's thread."""

from __future__ import annotations

from results.records import Decision, DecisionSource, Experiment, Kind
from scheduler.runs.workspace import Workspace

from . import events
from .judge import Action, Judge
from .ledger import Ledger
from .noise import Rule, Ruling, Verdict
from .state import ResearchState


class Promotion:
    def __init__(self, state: ResearchState, workspace: Workspace, ledger: Ledger, judge: Judge):
        self.state, self.ws, self.ledger, self.judge = state, workspace, ledger, judge

    def promote(self, exp: Experiment, source: DecisionSource, reason: str, by: str = "",
                verdict: Verdict | None = None) -> list[Action]:
        """Move the frontier to a winner; what it returns (a re-test of a winner that conflicts
        with a moved frontier) the supervisor carries out next."""
        state, previous = self.state, self.state.frontier
        rule = verdict.rule if verdict is not None else None
        if exp.parent_commit == previous or self.ws.is_ancestor(previous, exp.commit):
            self._advance(exp, exp.commit, source, reason, by, rule, verdict)
            return []
        replayed = self.ws.replay(None, exp.commit, previous)  # the verification run checks it out
        if replayed is None:
            return self._conflict(exp, source, reason, by)
        if source is DecisionSource.USER:
            self._advance(exp, replayed, source, f"{reason}; replayed on the frontier as {replayed[:8]}", by)
            return []
        verify = self.ledger.new_experiment(Experiment(
            run_id=state.run_id, lane=-1, kind=Kind.VERIFICATION, commit=replayed, parent_commit=previous,
            gpu_name=exp.gpu_name, hypothesis=exp.hypothesis, agent=exp.agent, verifies=exp.id, change=exp.change,
            description=exp.description if exp.kind is Kind.VERIFICATION else f"{exp.description} (on the new frontier)"))
        state.pending.appendleft(verify)
        self.ledger.decide(exp, Decision.DISCARD, source, f"{reason}; the frontier moved meanwhile, so it is "
                                                         f"measured again on top of it as #{verify.id}", by,
                           Rule.REMEASURE, verdict)
        return []

    def _conflict(self, exp: Experiment, source: DecisionSource, reason: str, by: str) -> list[Action]:
        """It changed what the frontier changed since (the same constant, say): it cannot be
        replayed on top. Judged as it is against the frontier's own runs: if it beats them the
        frontier takes its code whole, as a merge that resolves every conflict its way; if it is
        too close to tell it is run again (a better result is never lost to ordering)."""
        state, previous = self.state, self.state.frontier
        verdict = self.judge.against_frontier(state, exp)
        if verdict is not None and verdict.action is Ruling.KEEP:
            message = f"{exp.description} (in place of {previous[:8]})\n\n{exp.hypothesis or ''}".rstrip() + "\n"
            adopted = self.ws.adopt(exp.commit, previous, message)
            state.measurements.same_code(adopted, exp.commit)
            self._advance(exp, adopted, source, f"{reason}; it conflicts with the frontier {previous[:8]} but "
                                                f"also beats it as it is ({verdict.reason}), so the frontier "
                                                f"takes its code", by, verdict.rule, verdict)
            return []
        if verdict is not None and verdict.action is Ruling.CONFIRM and source is DecisionSource.AUTO:
            return self.judge.again(state, exp, Rule.RETEST, f"it conflicts with the frontier {previous[:8]}, "
                                                             f"against which it is {verdict.reason}; running it "
                                                             f"again", verdict)
        against = f" and, against it, {verdict.reason}" if verdict is not None else ""
        self.ledger.decide(exp, Decision.DISCARD, source, f"{reason}; but it conflicts with the frontier "
                                                         f"{previous[:8]}{against}", by, Rule.CONFLICT, verdict)
        self.ledger.event("promotion_conflict", source, experiment_id=exp.id, detail={"frontier": previous},
                          now=True)
        return []

    def undo(self, exp: Experiment, by: str = "") -> None:
        """A person discarded the frontier's own commit: the frontier goes back to its parent."""
        state = self.state
        if not self.ws.advance(exp.parent_commit, state.frontier):
            return
        previous, state.frontier = state.frontier, exp.parent_commit
        self.ledger.emit(events.FrontierAdvanced(state.frontier, previous, None))
        self.ledger.event("frontier", DecisionSource.USER, exp.lane, exp.id,
                          {"commit": state.frontier, "previous": previous, "undo": True, **({"by": by} if by else {})},
                          now=True)

    def _advance(self, exp: Experiment, commit: str, source: DecisionSource, reason: str, by: str,
                 rule: Rule | None = None, verdict: Verdict | None = None) -> None:
        state, previous = self.state, self.state.frontier
        if not self.ws.advance(commit, previous):
            self.ledger.notice(events.Level.ERROR, f"the frontier branch {self.ws.branch} was moved outside "
                                                   f"autoresearch-tui; #{exp.id} was not promoted")
            return
        state.frontier = commit
        self.ledger.decide(exp, Decision.KEEP, source, reason, by, rule, verdict)
        self.ledger.event("frontier", source, exp.lane, exp.id,
                          {"commit": commit, "previous": previous, **({"by": by} if by else {})})
        mean = state.measurements.mean(exp.commit, exp.gpu_name or "")
        self.ledger.emit(events.FrontierAdvanced(commit, previous, exp.id,
                                                 state.metric.unscore(mean) if mean is not None else None))

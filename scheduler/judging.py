"""The supervisor's judging half: a finished run becomes a decision, and a kept result moves
the frontier. Mixed into `Supervisor`, whose state it shares (the measurements, the frontier,
the pending runs); it runs on the supervisor's thread like everything else."""

from __future__ import annotations

from dataclasses import replace

from results.records import Decision, DecisionSource, Event as StoredEvent, Experiment, Status
from results.store import utcnow

from . import events
from .lanes import Lane

BASELINE_FAILURES_BEFORE_STOPPING = 2


class Judging:
    def _reference(self, commit: str | None, model: str) -> float | None:
        return self.measurements.mean(commit, model) if commit else None

    def _judge(self, exp: Experiment, lane: Lane) -> None:
        if exp.decision is not None:
            return  # a person already decided (discarded it while it ran)
        if exp.status is not Status.OK:
            self._decide(exp, Decision.DISCARD, DecisionSource.AUTO, f"{exp.status.value}: {exp.error or 'failed'}")
            if exp.kind == "baseline" and exp.status is not Status.KILLED:
                self._baseline_failed(exp, lane)
            return
        if exp.kind == "baseline":
            self._decide(exp, Decision.KEEP, DecisionSource.AUTO, "baseline: the frontier as it is")
            waiting = self.experiments.get(exp.extra.get("reference_for"))
            if waiting is not None and waiting.decision is None:
                self._judge(waiting, lane)  # its reference is measured now
            return
        # A confirmation or a rerun is judged together with the experiment it repeats.
        original = self.experiments.get(exp.extra.get("confirms") or exp.extra.get("rerun_of"), exp)
        if original.kind not in ("proposal", "verification"):
            original = exp
        model = exp.gpu_name
        reference = self._reference(original.parent_commit, model)
        if reference is None:
            # Its parent was never measured on this GPU model: measure it, then judge again.
            self.pending.appendleft(self._new_experiment(
                "baseline", original.parent_commit, original.parent_commit,
                f"baseline: {original.parent_commit[:7]} on {model} (reference for #{exp.id})", model=model,
                extra={"reference_for": exp.id}))
            return
        runs = self.measurements.of(original.commit, model)
        verdict = self.policy.judge(runs, reference, self.measurements.sigma(model))
        if verdict.action == "confirm":
            self._emit(events.Decided(original.id, "confirm", "auto", verdict.reason, verdict.delta, verdict.margin))
            self.pending.appendleft(self._new_experiment(
                "confirm", original.commit, original.parent_commit, f"confirm #{original.id}: {original.description}",
                model=model, hypothesis=original.hypothesis, agent=original.agent,
                extra={"confirms": original.id, "change": original.extra.get("change")}))
            return
        if exp is not original:
            self._decide(exp, Decision(verdict.action), DecisionSource.AUTO, f"{verdict.reason} (with #{original.id})")
        if verdict.action == "keep":
            self._promote(original, DecisionSource.AUTO, verdict.reason)
        else:
            self._decide(original, Decision.DISCARD, DecisionSource.AUTO, verdict.reason)

    def _baseline_failed(self, exp: Experiment, lane: Lane) -> None:
        """The unmodified frontier failed. Once may be bad luck (a busy GPU); twice means the
        starting point itself is broken, and every further run would be wasted."""
        key = (exp.commit, exp.gpu_name)
        self.baseline_failures[key] = self.baseline_failures.get(key, 0) + 1
        if self.baseline_failures[key] < BASELINE_FAILURES_BEFORE_STOPPING:
            self._notice("warning", f"the frontier failed on lane {lane.index} ({exp.status.value}: {exp.error}); "
                                    f"running it again", lane.index)
            return
        self.failure = (f"the frontier {exp.commit[:8]} fails to run on {exp.gpu_name} "
                        f"({exp.status.value}: {exp.error}); see {exp.log_path}")
        self._notice("error", self.failure + "; stopping")
        self.exit_reason = "the frontier fails to run"
        self.quitting = "graceful"

    def _decide(self, exp: Experiment, decision: Decision, source: DecisionSource, reason: str) -> Experiment:
        exp = replace(exp, decision=decision, decision_source=source, decision_reason=reason)
        self.experiments[exp.id] = exp
        self._later(self.store.record_decision, exp.id, decision, source, reason, self.run_id)
        self._emit(events.Decided(exp.id, decision.value, source.value, reason))
        for i, past in enumerate(self.history):  # proposers learn from decisions, not just results
            if past.change is not None and past.change == exp.extra.get("change") and past.decision is None:
                self.history[i] = replace(past, decision=decision.value)
        self._observe(exp)
        return exp

    def _promote(self, exp: Experiment, source: DecisionSource, reason: str) -> None:
        """Advance the frontier to a winner: fast-forward when it was drafted on the frontier,
        otherwise replay it on the frontier and measure the result before trusting it."""
        previous = self.frontier
        if exp.parent_commit == previous or self.ws.is_ancestor(previous, exp.commit):
            self._advance(exp, exp.commit, source, reason)
            return
        replayed = self.ws.replay(None, exp.commit, previous)  # the verification run checks it out
        if replayed is None and self._beats_frontier(exp):
            # It changed what the frontier changed since (the same constant, say), and as it is
            # it measured better than the frontier: the frontier takes its code whole, as a
            # merge that resolves every conflict its way.
            adopted = self.ws.adopt(exp.commit, previous, f"{exp.description} (in place of {previous[:8]})\n\n"
                                                          f"{exp.hypothesis or ''}".rstrip() + "\n")
            self.measurements.same_code(adopted, exp.commit)
            self._advance(exp, adopted, source, f"{reason}; it conflicts with the frontier {previous[:8]} but "
                                                f"also beats it as it is, so the frontier takes its code")
            return
        if replayed is None:
            self._decide(exp, Decision.DISCARD, source, f"{reason}; but it conflicts with the frontier {previous[:8]}")
            self.store.add_event(StoredEvent(utcnow(), self.run_id, "promotion_conflict", source.value,
                                             experiment_id=exp.id, detail={"frontier": previous}))
            return
        if source is DecisionSource.USER:
            self._advance(exp, replayed, source, f"{reason}; replayed on the frontier as {replayed[:8]}")
            return
        verify = self._new_experiment("verification", replayed, previous, f"{exp.description} (on the new frontier)",
                                      model=exp.gpu_name, hypothesis=exp.hypothesis, agent=exp.agent,
                                      extra={"verifies": exp.id, "change": exp.extra.get("change")})
        self.pending.appendleft(verify)
        self._decide(exp, Decision.DISCARD, source, f"{reason}; the frontier moved meanwhile, so it is "
                                                    f"measured again on top of it as #{verify.id}")

    def _beats_frontier(self, exp: Experiment) -> bool:
        """Whether the experiment, as measured, beats the current frontier's own measurement
        by the margin (on its GPU model)."""
        model = exp.gpu_name or ""
        frontier = self._reference(self.frontier, model)
        runs = self.measurements.of(exp.commit, model)
        if frontier is None or not runs:
            return False
        return self.policy.judge(runs, frontier, self.measurements.sigma(model)).action == "keep"

    def _advance(self, exp: Experiment, commit: str, source: DecisionSource, reason: str) -> None:
        previous = self.frontier
        if not self.ws.advance(commit, previous):
            self._notice("error", f"the frontier branch {self.ws.branch} was moved outside autoresearch-tui; "
                                  f"#{exp.id} was not promoted")
            return
        self.frontier = commit
        self._frontier_moved()
        self._decide(exp, Decision.KEEP, source, reason)
        self._later(self.store.add_event, StoredEvent(utcnow(), self.run_id, "frontier", source.value, exp.lane, exp.id,
                                         {"commit": commit, "previous": previous}))
        self._emit(events.FrontierAdvanced(commit, previous, exp.id, self.measurements.mean(exp.commit, exp.gpu_name)))


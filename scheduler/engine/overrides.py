"""What a person's commands (scheduler/engine/control.py: a key in the TUI, a signal when headless) do
to the research line, applied on the supervisor's thread. Every one is an override, recorded in
the events table with who gave it (`{"by": ...}`) and when (the row's time)."""

from __future__ import annotations

from results.records import Decision, DecisionSource, Experiment, Kind, Status
from scheduler.runs.workspace import Workspace

from . import control, events
from .ledger import Ledger
from .promotion import Promotion
from .state import Held, Quitting, Ready, ResearchState, Running

USER = DecisionSource.USER


class Overrides:
    def __init__(self, state: ResearchState, workspace: Workspace, ledger: Ledger, promotion: Promotion):
        self.state, self.ws, self.ledger, self.promotion = state, workspace, ledger, promotion

    def apply(self, command: control.Command) -> None:
        state, ledger = self.state, self.ledger
        lanes = state.lanes
        match command:
            case control.Quit(now=now):
                state.quitting = Quitting.NOW if now or state.quitting else Quitting.GRACEFUL
                ledger.event(f"quit:{state.quitting.value}", USER, detail=_who(command), now=True)
                if state.quitting is Quitting.NOW:
                    for lane in lanes:
                        if lane.run is not None:
                            lane.run.handle.stop(Status.INTERRUPTED)
                ledger.notice(events.Level.INFO, "quitting now: stopping the runs" if state.quitting is Quitting.NOW
                              else "quitting: no new runs; the running ones finish (again to stop them now)")
            case control.PauseLane(lane=i) | control.ResumeLane(lane=i) | control.StopRun(lane=i) \
                    if not 0 <= i < len(lanes):
                ledger.notice(events.Level.WARNING, f"there is no lane {i}")
            case control.PauseLane(lane=i):
                lanes[i].paused = True
                ledger.event("pause", USER, i, detail=_who(command), now=True)
                ledger.lane_changed(lanes[i], "paused: the running experiment finishes, no new one starts")
            case control.ResumeLane(lane=i):
                lanes[i].paused = False
                ledger.event("resume", USER, i, detail=_who(command), now=True)
                ledger.lane_changed(lanes[i])
            case control.StopRun(lane=i):
                run = lanes[i].run
                if run is None:
                    ledger.notice(events.Level.WARNING, f"lane {i} has no run to stop")
                    return
                ledger.event("stop", USER, i, run.experiment.id, _who(command), now=True)
                run.handle.stop(Status.KILLED)
            case control.Keep(experiment_id=n) | control.Discard(experiment_id=n) | control.Rerun(experiment_id=n) \
                    if n not in state.experiments:
                ledger.notice(events.Level.WARNING, f"experiment #{n} is not part of this research line")
            case control.Keep(experiment_id=n):
                exp = state.experiments[n]
                if exp.status is not Status.OK:
                    ledger.notice(events.Level.WARNING, f"#{n} has no result to keep ({exp.status.value})")
                elif exp.commit == state.frontier:
                    ledger.notice(events.Level.INFO, f"#{n} is already the frontier")
                else:
                    self.promotion.promote(exp, USER, _reason("kept", command), command.by)
            case control.Discard(experiment_id=n):
                self._discard(state.experiments[n], command)
            case control.Rerun(experiment_id=n):
                exp = state.experiments[n]
                again = ledger.new_experiment(Experiment(
                    run_id=state.run_id, lane=-1, kind=Kind.RERUN, commit=exp.commit, parent_commit=exp.parent_commit,
                    gpu_name=exp.gpu_name, hypothesis=exp.hypothesis, agent=exp.agent, rerun_of=n, change=exp.change,
                    description=f"rerun #{n}: {exp.description}"))
                state.pending.append(again)
                ledger.event("rerun", USER, experiment_id=n, detail={**_who(command), "as": again.id}, now=True)
            case control.Approve(experiment_id=n) | control.Reject(experiment_id=n):
                self._review(command, n)

    def _review(self, command: control.Approve | control.Reject, experiment_id: int) -> None:
        lane = next((lane for lane in self.state.lanes
                     if isinstance(lane.next, Held) and lane.next.experiment.id == experiment_id), None)
        if lane is None:
            self.ledger.notice(events.Level.WARNING, f"#{experiment_id} is not waiting for review")
            return
        exp = lane.next.experiment
        if isinstance(command, control.Approve):
            lane.next = Ready(exp)
            self.ledger.event("approve", USER, lane.index, experiment_id, _who(command), now=True)
        else:
            lane.next = None
            self.ledger.reject(exp, "rejected by a person")
            self.ledger.event("reject", USER, lane.index, experiment_id, _who(command), now=True)
        self.ledger.lane_changed(lane)

    def _discard(self, exp: Experiment, command: control.Discard) -> None:
        state, reason = self.state, _reason("discarded", command)
        lane = state.lane_running(exp.id)
        if lane is not None:  # discarding a running experiment stops it
            decided = self.ledger.decide(lane.current, Decision.DISCARD, USER, reason, command.by)
            lane.run = Running(decided, lane.run.handle)
            lane.run.handle.stop(Status.KILLED)
            return
        if exp.commit == state.frontier and exp.kind is not Kind.BASELINE and exp.parent_commit:
            self.promotion.undo(exp, command.by)
        elif exp.decision is Decision.KEEP and exp.commit and self.ws.is_ancestor(exp.commit, state.frontier):
            self.ledger.notice(events.Level.WARNING, f"#{exp.id} is recorded as discarded, but later keeps build "
                                                     f"on it; its change stays in the frontier")
        self.ledger.decide(exp, Decision.DISCARD, USER, reason, command.by)


def _who(command) -> dict:
    """Who gave an override, for its events row (the row's time says when)."""
    return {"by": command.by} if command.by else {}


def _reason(verb: str, command) -> str:
    return f"{verb} by {command.by}" if command.by else f"{verb} by a person"

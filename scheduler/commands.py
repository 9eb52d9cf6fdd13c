"""The supervisor's control half: what a person (a key in the TUI, a signal when headless)
may ask, applied on the supervisor's thread. Mixed into `Supervisor`."""

from __future__ import annotations

from dataclasses import replace

from results.records import Decision, DecisionSource, Event as StoredEvent, Experiment, Status
from results.store import utcnow

from . import control, events


class Commands:
    def _command(self, command) -> None:
        match command:
            case control.Quit(now=now):
                self.quitting = "now" if now or self.quitting else "graceful"
                self.store.add_event(StoredEvent(utcnow(), self.run_id, f"quit:{self.quitting}", "user",
                                                 detail=_who(command)))
                if self.quitting == "now":
                    for lane in self.lanes:
                        if lane.handle is not None:
                            lane.handle.stop(Status.INTERRUPTED)
                self._notice("info", "quitting now: stopping the runs" if self.quitting == "now" else
                             "quitting: no new runs; the running ones finish (again to stop them now)")
            case control.PauseLane(lane=i) | control.ResumeLane(lane=i) if not 0 <= i < len(self.lanes):
                self._notice("warning", f"there is no lane {i}")
            case control.PauseLane(lane=i):
                self.lanes[i].paused = True
                self.store.add_event(StoredEvent(utcnow(), self.run_id, "pause", "user", i, detail=_who(command)))
                self._lane_changed(self.lanes[i], "paused: the running experiment finishes, no new one starts")
            case control.ResumeLane(lane=i):
                self.lanes[i].paused = False
                self.store.add_event(StoredEvent(utcnow(), self.run_id, "resume", "user", i, detail=_who(command)))
                self._lane_changed(self.lanes[i])
            case control.StopRun(lane=i):
                if 0 <= i < len(self.lanes) and self.lanes[i].handle is not None:
                    self.store.add_event(StoredEvent(utcnow(), self.run_id, "stop", "user", i,
                                                     self.lanes[i].current.id, _who(command)))
                    self.lanes[i].handle.stop(Status.KILLED)
                else:
                    self._notice("warning", f"lane {i} has no run to stop")
            case control.Keep(experiment_id=n) | control.Discard(experiment_id=n) | control.Rerun(experiment_id=n) \
                    if n not in self.experiments:
                self._notice("warning", f"experiment #{n} is not part of this research line")
            case control.Keep(experiment_id=n):
                exp = self.experiments[n]
                if exp.status is not Status.OK:
                    self._notice("warning", f"#{n} has no result to keep ({exp.status.value})")
                elif exp.commit == self.frontier:
                    self._notice("info", f"#{n} is already the frontier")
                else:
                    self._promote(exp, DecisionSource.USER, _reason("kept", command))
            case control.Discard(experiment_id=n):
                self._user_discard(self.experiments[n], _reason("discarded", command))
            case control.Rerun(experiment_id=n):
                exp = self.experiments[n]
                again = self._new_experiment(
                    "rerun", exp.commit, exp.parent_commit, f"rerun #{n}: {exp.description}", model=exp.gpu_name,
                    hypothesis=exp.hypothesis, agent=exp.agent, extra={"rerun_of": n, "change": exp.extra.get("change")})
                self.pending.append(again)
                self.store.add_event(StoredEvent(utcnow(), self.run_id, "rerun", "user", experiment_id=n,
                                                 detail={**_who(command), "as": again.id}))
            case control.Approve(experiment_id=n) | control.Reject(experiment_id=n):
                lane = next((lane for lane in self.lanes if lane.held is not None and lane.held.id == n), None)
                if lane is None:
                    self._notice("warning", f"#{n} is not waiting for review")
                    return
                exp, lane.held = lane.held, None
                if isinstance(command, control.Approve):
                    self.store.add_event(StoredEvent(utcnow(), self.run_id, "approve", "user", lane.index, n,
                                                     _who(command)))
                    lane.ready = exp
                else:
                    rejected = replace(exp, status=Status.REJECTED, finished_at=utcnow(), error="rejected by a person")
                    self._save(rejected)
                    self._remember(rejected)
                    self.store.add_event(StoredEvent(utcnow(), self.run_id, "reject", "user", lane.index, n,
                                                     _who(command)))
                self._lane_changed(lane)

    def _user_discard(self, exp: Experiment, reason: str) -> None:
        lane = next((lane for lane in self.lanes if lane.current is not None and lane.current.id == exp.id), None)
        if lane is not None:  # discarding a running experiment stops it
            lane.current = self._decide(lane.current, Decision.DISCARD, DecisionSource.USER, reason)
            lane.handle.stop(Status.KILLED)
            return
        if exp.commit == self.frontier and exp.kind != "baseline" and exp.parent_commit:
            if self.ws.advance(exp.parent_commit, self.frontier):
                previous, self.frontier = self.frontier, exp.parent_commit
                self._frontier_moved()
                self._emit(events.FrontierAdvanced(self.frontier, previous, None))
                self.store.add_event(StoredEvent(utcnow(), self.run_id, "frontier", "user", exp.lane, exp.id,
                                                 {"commit": self.frontier, "previous": previous, "undo": True}))
        elif exp.decision is Decision.KEEP and exp.commit and self.ws.is_ancestor(exp.commit, self.frontier):
            self._notice("warning", f"#{exp.id} is recorded as discarded, but later keeps build on it; "
                                    f"its change stays in the frontier")
        self._decide(exp, Decision.DISCARD, DecisionSource.USER, reason)


def _who(command) -> dict:
    """Who gave an override, for its events row (the row's time says when)."""
    return {"by": command.by} if command.by else {}


def _reason(verb: str, command) -> str:
    return f"{verb} by {command.by}" if command.by else f"{verb} by a person"

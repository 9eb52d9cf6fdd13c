"""What each override key asks the engine, mixed into the app: keep, discard, rerun, approve,
reject, pause, stop and quit. Each one is a control command with who sent it; the screen says
at once what was asked, and the engine's events say what became of it."""

from __future__ import annotations

from results.records import Experiment, Status
from scheduler.engine import control

from .confirm import Choice, ConfirmScreen
from .detail import DetailScreen


class Overrides:
    def send(self, command: control.Command, note: str | None = None) -> bool:
        """Hand a command to the engine (the only way this app changes anything)."""
        if self.link.run is not None and not self.engine_running:
            self.notify("the research has finished: nothing can change it now", severity="warning")
            return False
        self.commands_sent.append(command)
        self.link.submit(command)
        if note:
            self.notify(note, timeout=4)
        return True

    def _ask(self, question: str, detail: str, choices: list[Choice], then) -> None:
        self.push_screen(ConfirmScreen(question, detail, choices), lambda answer: answer and then(answer))

    def _need_experiment(self) -> Experiment | None:
        exp = self.selected_experiment()
        if exp is None:
            self.notify("select an experiment in the table first", severity="warning")
        return exp

    def action_keep(self) -> None:
        exp = self._need_experiment()
        if exp is None:
            return
        if exp.status is not Status.OK:
            self.notify(f"#{exp.id} has no result to keep ({self.view.status_text(exp)})", severity="warning")
            return
        self._ask(f"Keep #{exp.id}?", f"{exp.description}\nIt becomes the frontier: every lane builds on it next.",
                  [Choice("y", f"keep #{exp.id}", "yes", "success"), Choice("n", "cancel", None)],
                  lambda _: self.send(control.Keep(exp.id, by=self.by), f"keep #{exp.id} sent"))

    def action_discard(self) -> None:
        exp = self._need_experiment()
        if exp is None:
            return
        if exp.status is Status.RUNNING:
            detail = "It is running: it is stopped now."
        elif exp.decision is not None and exp.decision.value == "keep":
            detail = "It was kept: the frontier goes back to its parent if nothing was built on it yet."
        else:
            detail = "It will never be kept."
        self._ask(f"Discard #{exp.id}?", f"{exp.description}\n{detail}",
                  [Choice("y", f"discard #{exp.id}", "yes", "error"), Choice("n", "cancel", None)],
                  lambda _: self.send(control.Discard(exp.id, by=self.by), f"discard #{exp.id} sent"))

    def action_rerun(self) -> None:
        exp = self._need_experiment()
        if exp is None:
            return
        if exp.commit is None:
            self.notify(f"#{exp.id} has no commit to run again", severity="warning")
            return
        if self.send(control.Rerun(exp.id, by=self.by), f"#{exp.id} queued to run again"):
            self._reload_due = True

    def _review(self, command) -> None:
        preferred = self.selected_experiment()
        experiment_id = self.view.awaiting_review(preferred.id if preferred else None, self.selected_lane)
        if experiment_id is None:
            why = "" if self.view.review else " (review mode is off; start with --review)"
            self.notify(f"no proposal is awaiting review{why}", severity="warning")
            return
        verb = "approved" if command is control.Approve else "rejected"
        if self.send(command(experiment_id, by=self.by), f"#{experiment_id} {verb}"):
            self.view.reviewed(experiment_id)
            self.render_changes()

    def action_confirm(self) -> None:
        self._ask("Measure the claim now?", "The frontier and the starting commit run side by side on the lanes, "
                  "a few times each; no new proposal runs until the claim is in, then the night goes on.",
                  [Choice("y", "measure it", "yes", "success"), Choice("n", "cancel", None)],
                  lambda _: self.send(control.Confirm(by=self.by), "measuring the claim: the frontier against "
                                                                   "the start"))

    def action_approve(self) -> None:
        self._review(control.Approve)

    def action_reject(self) -> None:
        self._review(control.Reject)

    def _target_lane(self):
        """The lane p and s act on: the selected one, or on the detail screen the lane of the
        experiment shown."""
        if isinstance(self.screen, DetailScreen):
            exp = self.view.experiments.get(self.screen.experiment_id)
            if exp is not None and exp.lane in self.view.lanes:
                return self.view.lanes[exp.lane]
        return self.view.lanes.get(self.selected_lane)

    def action_pause(self) -> None:
        lane = self._target_lane()
        if lane is None:
            return
        resume = lane.paused or lane.pending == "pausing"
        command = control.ResumeLane if resume else control.PauseLane
        if self.send(command(lane.lane, by=self.by)):
            self.view.asked(lane.lane, "resuming" if resume else "pausing")  # the pane says so at once
            self.render_changes()

    def action_stop(self) -> None:
        lane = self._target_lane()
        if lane is None:
            return
        exp = lane.running
        if exp is None:
            self.notify(f"lane {lane.lane} has no running experiment", severity="warning")
            return

        def stop(_):
            if self.send(control.StopRun(lane.lane, by=self.by), f"lane {lane.lane}: stop sent"):
                self.view.asked(lane.lane, "stopping")
                self.render_changes()

        self._ask(f"Stop #{exp.id} on lane {lane.lane}?", f"{exp.description}\nIt ends as killed, with no result.",
                  [Choice("y", f"stop #{exp.id}", "yes", "error"), Choice("n", "cancel", None)], stop)

    async def action_quit(self) -> None:
        if not self.engine_running:
            self.exit(self.engine_code if self.engine_code is not None else 0)
            return
        if self.view.quitting == "now":
            self.exit(self.engine_code or 0)  # a third time: close now; unmount stops the runs
            return
        running = sum(1 for lane in self.view.lanes.values() if lane.running is not None)
        choices = [Choice("q", "stop them now", "now", "error"), Choice("n", "cancel", None)]
        if self.view.quitting is None:
            choices.insert(0, Choice("y", "let them finish", "graceful", "warning"))
        self._ask("Quit?", f"{running} experiment(s) running. Letting them finish, they are judged and the "
                           "app closes after; stopped now, they are recorded as interrupted (--resume runs them "
                           "again).", choices, self._quit)

    def _quit(self, how: str) -> None:
        self.quit_when_done = True
        self.view.quitting = how
        self.view.changes.header = True
        self.send(control.Quit(now=how == "now", by=self.by))
        self.render_changes()

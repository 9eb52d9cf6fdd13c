"""Starting an experiment on a lane: the worktree it runs in, its child's environment (pinned to
the lane's GPU, no secrets), and the executor that runs it. Runs on the supervisor's thread;
the child's watcher answers through the inbox."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

from results.records import Experiment, Kind, Status
from results.store import utcnow
from scheduler.config import Config
from scheduler.runs.executor import RunSpec, child_environment, slug, target_command
from scheduler.runs.sandbox import Confinement
from scheduler.runs.workspace import Workspace

from . import events
from .confirmation import HELDOUT_VARIABLE
from .drafting import Drafting
from .inbox import Inbox, RunEnded, RunProgressed
from .ledger import Ledger
from .state import Lane, ResearchState, Running

log = logging.getLogger("autoresearch.supervisor")


class Launcher:
    def __init__(self, state: ResearchState, config: Config, workspace: Workspace, executor, inbox: Inbox,
                 ledger: Ledger, drafting: Drafting, *, logs: Path, compile_cache: Path):
        self.state, self.config, self.ws, self.executor = state, config, workspace, executor
        self.inbox, self.ledger, self.drafting = inbox, ledger, drafting
        self.logs, self.compile_cache = logs, compile_cache
        # The machine's CPU threads divided among the lanes, so lanes on one box do not fight.
        self.threads = max(1, (os.cpu_count() or 1) // max(1, len(state.lanes)))

    def launch(self, lane: Lane, exp: Experiment) -> None:
        state = self.state
        if exp.kind is Kind.PROPOSAL and exp.parent_commit != state.frontier:
            exp = self.drafting.rebase_now(lane, exp)
            if exp is None:
                return
        # A proposal runs where it was drafted: its commit is checked out there already, and
        # the worktree the last run used becomes the next draft's (the roles swap). Anything
        # else (a baseline, a confirmation) is checked out in the run worktree.
        in_place = exp.commit == lane.draft_head and not lane.working
        run_dir = lane.draft_dir if in_place else lane.run_dir
        log_path = self.logs / f"{exp.id:06d}.log"
        exp = replace(exp, status=Status.RUNNING, lane=lane.index, gpu_index=lane.gpu.index, gpu_uuid=lane.gpu.uuid,
                      gpu_name=lane.model, worktree=str(run_dir), started_at=utcnow(), log_path=str(log_path))
        try:
            if in_place:
                lane.run_dir, lane.draft_dir, lane.draft_head = lane.draft_dir, lane.run_dir, None
            else:
                self.ws.checkout(run_dir, exp.commit)
            compile_cache = self.compile_cache / slug(lane.model)
            env = child_environment(dict(os.environ), visible_devices=lane.gpu.visible_devices, threads=self.threads,
                                    compile_cache=compile_cache, budget=self.config.budget)
            if exp.kind is Kind.CLAIM:  # the harness also measures its held-out split (confirmation.py)
                env[HELDOUT_VARIABLE] = "1"
            spec = RunSpec(exp.id, lane.index, target_command(self.config.target.command), run_dir, env, log_path,
                           timeout_s=self.config.timeout_after(state.run_seconds), hung_s=self.config.hung_seconds,
                           kill_grace_s=self.config.kill_grace_seconds, metric=self.config.target.metric,
                           confinement=Confinement(run_dir, (compile_cache,), lane.gpu), commit=exp.commit,
                           base=state.frontier)
            handle = self.executor.start(
                spec, on_progress=lambda points, i=exp.id, n=lane.index: self.inbox.put(
                    RunProgressed(n, i, tuple(points))),
                on_done=lambda result, n=lane.index: self.inbox.put(RunEnded(n, result)))
        except Exception as e:  # noqa: BLE001 - the experiment fails, the lane goes on
            log.exception("could not start experiment %s", exp.id)
            self.ledger.save(replace(exp, status=Status.CRASH, finished_at=utcnow(), error=f"could not start: {e}"))
            self.ledger.notice(events.Level.ERROR, f"lane {lane.index}: experiment #{exp.id} could not start: {e}",
                               lane.index)
            return
        lane.run = Running(exp, handle)
        if exp.kind is not Kind.CLAIM:  # the claim measures the research; it is not a step of it
            state.started += 1
        self.ledger.save(exp)
        self.ledger.emit(events.RunStarted(lane.index, exp, getattr(handle, "pid", None)))
        self.ledger.lane_changed(lane, exp.description)

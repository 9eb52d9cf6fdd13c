"""The engine: every lane proposes, trains and is judged, concurrently, until told to stop.

One thread (the one that calls `run()`) owns all state. Everything else -- proposal makers,
the watcher thread of each run, the telemetry sampler, the TUI, signal handlers -- talks to it
by putting messages on one queue, so there are no races on the lanes, the frontier or the
store, and the order of events is the order things happened."""

from __future__ import annotations

import logging
import os
import queue
import socket
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Callable

from agents.proposer import PastExperiment, Proposer, ProposerContext
from results.records import Event as StoredEvent, Experiment, MetricPoint, Run, Status
from results.store import Store, utcnow

from . import control, events
from .commands import Commands
from .config import Config
from .decide import Measurements, Policy
from .executor import LocalExecutor, RunSpec, child_environment, target_command
from .gpus import Gpu, TelemetrySampler
from .judging import Judging
from .proposing import Proposing
from .lanes import Lane
from .workspace import Workspace

log = logging.getLogger("autoresearch.supervisor")



class Supervisor(Judging, Commands, Proposing):
    def __init__(self, config: Config, store: Store, workspace: Workspace, gpus: list[Gpu], proposer: Proposer,
                 sink: Callable[[events.Event], None] = lambda event: None, executor=None, telemetry: bool = True):
        self.config, self.store, self.ws, self.proposer, self.sink = config, store, workspace, proposer, sink
        self.executor = executor or LocalExecutor()
        self.policy = Policy(floor=config.noise_floor)
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()  # put() is safe from signal handlers
        self.run_id = f"{config.tag}-{utcnow():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        state = workspace.root / ".autoresearch"
        self.logs = state / "logs" / config.tag
        self.compile_cache = state / "compile-cache"
        self.resumed = workspace.exists()
        self.frontier = workspace.ensure_frontier()
        self.lanes = [Lane(g, workspace.worktree(f"lane-{g.lane}"), workspace.worktree(f"lane-{g.lane}-draft"))
                      for g in gpus]
        self.threads = max(1, (os.cpu_count() or 1) // max(1, len(gpus)))
        self.pool = ThreadPoolExecutor(max_workers=max(1, len(gpus)), thread_name_prefix="propose")
        self.sampler = TelemetrySampler(gpus, lambda s: self.inbox.put(("sample", s)),
                                        lambda gpu, why: self.inbox.put(("lost", gpu.lane, why))) if telemetry else None
        self.measurements = Measurements()
        self.history: list[PastExperiment] = []
        self.pending: deque[Experiment] = deque()  # queued runs any lane of the right model may take
        self.experiments: dict[int, Experiment] = {}
        self.started = 0  # runs started by this session
        self.finished = 0
        self.quitting: str | None = None  # None | "graceful" | "now"
        self.baseline_failures: dict[tuple[str, str], int] = {}
        self.failure: str | None = None  # why the research cannot go on, when it cannot
        self.exit_reason = ""
        self.deferred: list[tuple[Callable, tuple]] = []  # store writes that may wait for the next launch
        self.changes: dict[str, int] = {}  # every proposed change's key -> the first experiment that made it
        if hasattr(proposer, "attach"):  # the LLM agents: memories, transcripts, call accounting
            proposer.attach(ProposerContext(
                run_id=self.run_id, lanes=len(gpus), transcripts=self.logs / "transcripts",
                recall=lambda query, k: [m.text for m in store.recall(query, k)],
                remember=lambda text, tags, author, experiment_id: store.remember(
                    text, tags, author=author, run_id=self.run_id, experiment_id=experiment_id),
                report_call=lambda call: self.inbox.put(("llm_call", call))))

    # -- the outside world ----------------------------------------------------------------------

    def submit(self, command: control.Command) -> None:
        """Thread-safe (and signal-safe): the only way to change the engine from outside."""
        self.inbox.put(("command", command))

    def _emit(self, event) -> None:
        try:
            self.sink(event)
        except Exception:  # noqa: BLE001 - a broken consumer must not stop the research
            log.exception("event consumer failed on %s", events.event_name(event))

    def _notice(self, level: str, message: str, lane: int | None = None) -> None:
        self._emit(events.Notice(level, message, lane))
        self._later(self.store.add_event, StoredEvent(utcnow(), self.run_id, f"notice:{level}", lane=lane,
                                         detail={"message": message}))

    def _lane_changed(self, lane: Lane, detail: str = "") -> None:
        self._emit(events.LaneChanged(lane.index, lane.state(), detail))

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> int:
        self._start()
        try:
            while not self._done():
                self._schedule()
                self._write_deferred()
                if self._done():
                    break
                try:
                    message = self.inbox.get(timeout=self._wait_time())
                except queue.Empty:
                    continue
                self._handle(message)
                while True:  # drain bursts (progress lines) before the next scheduling pass
                    try:
                        self._handle(self.inbox.get_nowait())
                    except queue.Empty:
                        break
        finally:
            self._shutdown()
        return 1 if self.failure else 0

    def _wait_time(self) -> float:
        waits = [lane.retry_at - time.monotonic() for lane in self.lanes if lane.retry_at > time.monotonic()]
        return max(0.05, min(waits, default=1.0))

    def _start(self) -> None:
        self.store.start_run(Run(id=self.run_id, tag=self.config.tag, repo=str(self.ws.root), started_at=utcnow(),
                                 host=socket.gethostname(), config=_config_record(self.config, self.lanes)))
        resumed = self.resumed
        self._load_history(resumed)
        if self.sampler is not None:
            self.sampler.start()
        for lane in self.lanes:
            self._lane_changed(lane)
        self._notice("info", f"{'resumed' if resumed else 'started'} {self.config.tag} on {len(self.lanes)} "
                             f"lane(s), frontier {self.frontier[:8]} ({self.ws.branch})")

    def _load_history(self, resumed: bool) -> None:
        """Rebuild what earlier sessions of this tag learned: measurements, what was tried, and
        the runs a dead supervisor left behind (marked interrupted and queued again)."""
        for old_run in self.store.run_ids(self.config.tag):
            if old_run != self.run_id:
                self.store.interrupt_unfinished(old_run)
        past = self.store.experiments(tag=self.config.tag)
        requeued = {e.extra.get("rerun_of") for e in past}
        for exp in past:
            self.experiments[exp.id] = exp
            self._remember(exp)
            if exp.kind == "proposal" and exp.extra.get("change") and exp.status is not Status.REJECTED:
                self.changes.setdefault(exp.extra["change"], exp.id)
            if exp.status is Status.INTERRUPTED and exp.id not in requeued and exp.commit:
                again = self._new_experiment(exp.kind, exp.commit, exp.parent_commit, exp.description,
                                             model=exp.gpu_name, hypothesis=exp.hypothesis, agent=exp.agent,
                                             extra={**exp.extra, "rerun_of": exp.id})
                self.pending.append(again)
            elif exp.status is Status.QUEUED and exp.run_id != self.run_id:
                self.pending.append(exp)
        if resumed and self.pending:
            self._notice("info", f"{len(self.pending)} experiment(s) from the last session queued again")

    def _remember(self, exp: Experiment) -> None:
        """Fold a finished experiment into the measurements and the proposers' history."""
        if exp.status is Status.REJECTED and exp.commit is None:
            return
        value = self._metric(exp)
        if exp.status is Status.OK and value is not None and exp.commit and exp.gpu_name:
            self.measurements.add(exp.commit, exp.gpu_name, self.config.target.score(value))
        if exp.kind == "proposal" and exp.status.finished:
            self.history.append(PastExperiment(exp.description, exp.extra.get("change"), value, exp.status.value,
                                               exp.decision.value if exp.decision else None))

    def _metric(self, exp: Experiment) -> float | None:
        name = self.config.target.metric
        value = exp.summary.get(name, exp.extra.get(name))
        try:
            return float(value) if value is not None else None
        except (TypeError, ValueError):
            return None

    def _done(self) -> bool:
        if any(lane.handle is not None for lane in self.lanes):
            return False
        if self.quitting:
            self.exit_reason = self.exit_reason or "stopped by request"
            return True
        if self._out_of_budget() and not any(map(_follow_up, self.pending)):
            extra = self.started - self.config.max_experiments
            self.exit_reason = f"{self.config.max_experiments} experiments run" + (
                f", and {extra} more to judge them" if extra > 0 else "")
            return True
        usable = [lane for lane in self.lanes if not lane.lost]
        if not usable:
            self.exit_reason = "no lane left"
            return True
        if all(lane.exhausted and lane.ready is None and lane.held is None for lane in usable) and not self.pending:
            self.exit_reason = "the proposer has nothing more to try"
            return True
        return False

    def _out_of_budget(self) -> bool:
        return self.config.max_experiments is not None and self.started >= self.config.max_experiments

    # -- choosing each lane's next run ------------------------------------------------------------

    def _schedule(self) -> None:
        """Give every free lane its next run, then let every lane draft ahead. Runs first: with
        --max-experiments, a lane's draft must not take the slot an idle lane could fill now."""
        for lane in self.lanes:
            if lane.lost or lane.handle is not None or lane.paused or self.quitting:
                continue
            # Past --max-experiments, only the runs that judge results already in hand go on.
            job = self._next_follow_up(lane) if self._out_of_budget() else self._next_job(lane)
            if job is not None:
                self._launch(lane, job)
        for lane in self.lanes:
            if lane.ready is None and lane.held is None and lane.drafting is None:
                self._draft(lane)

    def _next_job(self, lane: Lane) -> Experiment | None:
        for exp in self.pending:
            if exp.gpu_name in (None, lane.model):
                self.pending.remove(exp)
                return exp
        if self._needs_baseline(lane.model):
            first = not self.measurements.count(self.frontier, lane.model) and not self.history
            return self._new_experiment("baseline", self.frontier, self.frontier,
                                        "baseline" if first else f"baseline: frontier {self.frontier[:7]} on {lane.model}",
                                        model=lane.model)
        if lane.ready is not None:
            exp, lane.ready = lane.ready, None
            return exp
        return None

    def _next_follow_up(self, lane: Lane) -> Experiment | None:
        for exp in self.pending:
            if _follow_up(exp) and exp.gpu_name in (None, lane.model):
                self.pending.remove(exp)
                return exp
        return None

    def _needs_baseline(self, model: str) -> bool:
        """Two runs of the frontier give a first noise estimate; after that, one is enough to
        measure a new frontier on a GPU model it was not measured on."""
        wanted = self.config.baseline_runs if self.measurements.sigma(model) is None else 1
        have = self.measurements.count(self.frontier, model)
        running = sum(1 for lane in self.lanes if lane.handle is not None and lane.model == model
                      and lane.current.commit == self.frontier and lane.current.kind == "baseline")
        return have + running < wanted

    def _new_experiment(self, kind: str, commit: str, parent: str | None, description: str, *,
                        model: str | None = None, hypothesis: str | None = None, agent: str | None = None,
                        extra: dict | None = None, lane: int = -1) -> Experiment:
        exp = self.store.add_experiment(Experiment(
            run_id=self.run_id, lane=lane, description=description, kind=kind, commit=commit, parent_commit=parent,
            branch=self.ws.branch, gpu_name=model, hypothesis=hypothesis, agent=agent, extra=extra or {}))
        self.ws.keep_commit(exp.id, commit)
        self.experiments[exp.id] = exp
        return exp

    def _launch(self, lane: Lane, exp: Experiment) -> None:
        if exp.kind == "proposal" and exp.parent_commit != self.frontier:
            exp = self._rebase(lane, exp)
            if exp is None:
                return
        # A proposal runs where it was drafted: its commit is checked out there already, and
        # the worktree the last run used becomes the next draft's (the roles swap). Anything
        # else (a baseline, a confirmation) is checked out in the run worktree.
        in_place = exp.commit == lane.draft_head and lane.drafting is None
        run_dir = lane.draft_dir if in_place else lane.run_dir
        log_path = self.logs / f"{exp.id:06d}.log"
        exp = replace(exp, status=Status.RUNNING, lane=lane.index, gpu_index=lane.gpu.index, gpu_uuid=lane.gpu.uuid,
                      gpu_name=lane.model, worktree=str(run_dir), started_at=utcnow(), log_path=str(log_path))
        try:
            if in_place:
                lane.run_dir, lane.draft_dir, lane.draft_head = lane.draft_dir, lane.run_dir, None
            else:
                self.ws.checkout(run_dir, exp.commit)
            env = child_environment(dict(os.environ), visible_devices=lane.gpu.visible_devices, threads=self.threads,
                                    compile_cache=self.compile_cache / _slug(lane.model), budget=self.config.budget)
            spec = RunSpec(exp.id, lane.index, target_command(self.config.target.command), run_dir, env, log_path,
                           timeout_s=self.config.run_timeout, hung_s=self.config.hung_seconds,
                           kill_grace_s=self.config.kill_grace_seconds, metric=self.config.target.metric)
            lane.handle = self.executor.start(
                spec, on_progress=lambda p, i=exp.id, n=lane.index: self.inbox.put(("progress", n, i, p)),
                on_done=lambda result, n=lane.index: self.inbox.put(("done", n, result)))
        except Exception as e:  # noqa: BLE001 - the experiment fails, the lane goes on
            log.exception("could not start experiment %s", exp.id)
            exp = replace(exp, status=Status.CRASH, finished_at=utcnow(), error=f"could not start: {e}")
            self._save(exp)
            self._notice("error", f"lane {lane.index}: experiment #{exp.id} could not start: {e}", lane.index)
            return
        lane.current = exp
        self.started += 1
        self._save(exp)
        self._emit(events.RunStarted(lane.index, exp, getattr(lane.handle, "pid", None)))
        self._lane_changed(lane, exp.description)

    # -- messages ----------------------------------------------------------------------------------------------

    def _handle(self, message) -> None:
        kind = message[0]
        try:
            if kind == "progress":
                _, lane_index, experiment_id, points = message
                now = utcnow()
                self.store.add_metrics([MetricPoint(experiment_id, p.step, now, p.pct, p.loss, p.lrm, p.dt_ms,
                                                    p.tok_per_sec, p.mfu, p.epoch, p.remaining_s) for p in points])
                for point in points:
                    self._emit(events.RunProgress(lane_index, experiment_id, point))
            elif kind == "done":
                self._run_done(self.lanes[message[1]], message[2])
            elif kind == "proposal":
                self._proposal_done(self.lanes[message[1]], message[2])
            elif kind == "rebased":
                self._rebase_done(self.lanes[message[1]], *message[2:])
            elif kind == "sample":
                sample = message[1]
                self.store.add_sample(sample)
                lane = next((lane for lane in self.lanes if lane.gpu.index == sample.gpu_index), None)
                if lane is not None:
                    self._emit(events.GpuSampled(lane.index, sample))
            elif kind == "llm_call":
                self._llm_call(message[1])
            elif kind == "lost":
                self._lose(self.lanes[message[1]], message[2])
            elif kind == "command":
                self._command(message[1])
        except Exception as e:  # noqa: BLE001 - a bug of ours: log it whole, keep the lanes going
            log.exception("handling %s failed", kind)
            self._emit(events.Notice("error", f"internal error while handling {kind}: {e!r} (see the log)"))

    def _run_done(self, lane: Lane, result) -> None:
        exp = replace(lane.current, status=result.status, summary=result.summary, extra={**lane.current.extra,
                      **result.extra}, exit_code=result.exit_code, error=result.error, finished_at=result.finished_at)
        lane.handle, lane.current = None, None
        self.finished += 1
        self._save(exp)
        self._remember(exp)
        self._emit(events.RunFinished(lane.index, exp))
        if exp.status is Status.INTERRUPTED:
            self._lane_changed(lane)
            return  # the supervisor is quitting now; --resume runs it again
        self._judge(exp, lane)
        self._lane_changed(lane)

    def _lose(self, lane: Lane, why: str) -> None:
        lane.lost = True
        if lane.handle is not None:
            lane.handle.stop(Status.CRASH)
        self._notice("error", f"lane {lane.index} is out of service: {why}", lane.index)
        self._lane_changed(lane, why)

    # -- bookkeeping ---------------------------------------------------------------------------------------------------

    def _save(self, exp: Experiment) -> None:
        self.experiments[exp.id] = exp
        self.store.save_experiment(exp)

    def _later(self, write: Callable, *args) -> None:
        """A store write that can wait until the lanes have their next runs: decisions and
        events. A result itself is written at once (`_save`)."""
        self.deferred.append((write, args))

    def _write_deferred(self) -> None:
        writes, self.deferred = self.deferred, []
        for write, args in writes:
            try:
                write(*args)
            except Exception:  # noqa: BLE001 - ours; the traceback goes to the log
                log.exception("writing %s to the store failed", getattr(write, "__name__", write))

    def _shutdown(self) -> None:
        self._write_deferred()
        for lane in self.lanes:
            if lane.handle is not None:  # only after an error of ours: never leave a child behind
                lane.handle.stop(Status.INTERRUPTED)
                lane.handle.join(self.config.kill_grace_seconds + 5)
        close = getattr(self.proposer, "close", None)
        if close is not None:  # stops proposals in flight, lets memories being written finish
            try:
                close()
            except Exception:  # noqa: BLE001
                log.exception("closing the proposer failed")
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.sampler is not None:
            self.sampler.stop()
        self._write_deferred()
        self.store.finish_run(self.run_id)
        self.store.flush()
        self._emit(events.Finished(self.exit_reason or "error", self.finished, self.frontier,
                                   {"run_id": self.run_id, "branch": self.ws.branch}))


def _follow_up(exp: Experiment) -> bool:
    """A run that finishes judging an experiment already run (a confirmation, a verification
    on a moved frontier, the reference it needs): it runs even past --max-experiments, so the
    last results of a session are judged, not left as "measured again as #N"."""
    return exp.kind in ("confirm", "verification") or (exp.kind == "baseline" and "reference_for" in exp.extra)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").lower() or "device"


def _config_record(config: Config, lanes: list[Lane]) -> dict:
    """What the runs table remembers of a session's configuration (never a secret)."""
    return {"gpus": [f"{lane.gpu.model}#{lane.gpu.index}" for lane in lanes], "agent": config.agent,
            "budget": config.budget, "review": config.review, "noise_floor": config.noise_floor,
            "max_experiments": config.max_experiments, "target": {"editable": list(config.target.editable),
                                                                  "command": config.target.command,
                                                                  "metric": config.target.metric,
                                                                  "direction": config.target.direction}}

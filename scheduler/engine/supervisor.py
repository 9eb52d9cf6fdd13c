"""The engine's loop: every lane proposes, trains and is judged, concurrently, until told to stop.

One thread (the one that calls `run()`) owns the research line's state (scheduler/engine/state.py).
Everything else -- the proposal threads, each run's watcher thread, the telemetry sampler, the
TUI, signal handlers -- sends it typed messages through the inbox (scheduler/engine/inbox.py), so
there are no races on the lanes, the frontier or the store, and the order of events is the
order things happened. Each pass of the loop handles what arrived, then reconciles: every free
lane gets its next run, proposals waiting on a moved frontier are replayed, every lane drafts
ahead.

The loop composes its collaborators, each explicit about what it reads and changes:
  judge.py      the rules: a finished experiment -> actions (pure; applied here, in order)
  promotion.py  moving the frontier (git)
  drafting.py   proposals drafted ahead, replayed, checked; what the proposer hears back
  launching.py  an experiment onto a lane: its worktree, its child's environment, the executor
  overrides.py  a person's commands
  ledger.py     recording: state, store and events, in that order
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import time
import uuid
from dataclasses import replace
from typing import Callable

from agents.proposer import Proposer, ProposerContext
from results.evidence import RunEvidence
from results.records import Decision, DecisionSource, Event as StoredEvent, Experiment, Kind, MetricPoint, Run, Status
from results.store import Store, utcnow
from scheduler.runs import environment
from scheduler.config import Config
from scheduler.gpus import Gpu, TelemetrySampler
from scheduler.runs.executor import LocalExecutor
from scheduler.runs.sandbox import SandboxChoice, SandboxMode
from scheduler.runs.workspace import Workspace

from . import control, events
from .confirmation import Confirmation
from .drafting import PROPOSAL_FAILURES_BEFORE_GIVING_UP, Drafting
from .inbox import (AgentCallsMade, ClusterReach, CommandGiven, GpuLost, GpuSampleTaken, Inbox, LlmCallEnded,
                    MemoryToWrite, Message, ProposalDrafted, ProposalReplayed, Reach, RunEnded, RunProgressed,
                    UnknownMessage)
from .judge import Action, Confirm, Decide, FrontierFailed, Judge, Promote, Queue
from .launching import Launcher
from .ledger import Ledger
from .noise import GreedyPolicy, Policy, Rule
from .overrides import Overrides
from .plateau import Plateau, Step
from .promotion import Promotion
from .state import Lane, Quitting, Ready, ResearchState

log = logging.getLogger("autoresearch.supervisor")


class Supervisor:
    def __init__(self, config: Config, store: Store, workspace: Workspace, gpus: list[Gpu], proposer: Proposer,
                 sink: Callable[[events.Event], None] = lambda event: None, executor=None,
                 telemetry: bool | Callable = True,
                 sandbox: SandboxChoice | None = None, inbox: Inbox | None = None, announce: tuple[str, ...] = (),
                 on_close: tuple[Callable[[], None], ...] = ()):
        self.config, self.store, self.ws, self.proposer = config, store, workspace, proposer
        self.announce = announce  # more for the started notice (where external agents reach this session)
        self.on_close = on_close  # what stops writing to the inbox before the last records are drained
        # How training children are confined, said at start and in the run's record.
        self.sandbox = sandbox or SandboxChoice(None, "none given to this engine", SandboxMode.NONE)
        self.executor = executor or LocalExecutor(self.sandbox.sandbox)
        self.inbox = inbox or Inbox()  # given when something outside (the MCP server) writes to it from the start
        run_id = f"{config.tag}-{utcnow():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        folder = workspace.root / ".autoresearch"
        self.logs = folder / "logs" / config.tag
        self.resumed = workspace.exists()
        frontier = workspace.ensure_frontier()  # before the worktrees: they start at it
        lanes = [Lane(g, workspace.worktree(f"lane-{g.lane}"), workspace.worktree(f"lane-{g.lane}-draft")) for g in gpus]
        self.state = ResearchState(run_id=run_id, frontier=frontier, lanes=lanes,
                                   metric=config.metric,
                                   max_experiments=config.max_experiments, plateau=Plateau(config.plateau))
        self.judge = Judge(policy_for(config), config.target.constraints)
        self.ledger = Ledger(self.state, store, workspace.branch, workspace.keep_commit, sink,
                             observe=self._decided, policy=self.judge.policy,
                             drafting_detail=getattr(proposer, "drafting_detail", ""))
        self.promotion = Promotion(self.state, workspace, self.ledger, self.judge)
        self.confirmation = Confirmation(self.state, self.ledger, config.confirm_runs, config.confirm_max,
                                         config.noise_floor)
        self.drafting = Drafting(self.state, config, workspace, proposer, self.inbox, self.ledger)
        self.overrides = Overrides(self.state, workspace, self.ledger, self.promotion)
        self.launcher = Launcher(self.state, config, workspace, self.executor, self.inbox, self.ledger, self.drafting,
                                 logs=self.logs, compile_cache=folder / "compile-cache")
        # This machine's NVML sampler, or what `telemetry` makes (a Ray cluster's: one per node), or none.
        sampler = telemetry if callable(telemetry) else TelemetrySampler if telemetry else None
        self.sampler = sampler(gpus, lambda s: self.inbox.put(GpuSampleTaken(s)),
                               lambda gpu, why: self.inbox.put(GpuLost(gpu.lane, why))) if sampler else None
        self._handlers: dict[type, Callable] = {
            RunProgressed: self._progressed, RunEnded: self._run_ended,
            ProposalDrafted: lambda m: self.drafting.drafted(self.state.lanes[m.lane], m.future),
            ProposalReplayed: lambda m: self.drafting.replayed(self.state.lanes[m.lane], m.experiment, m.frontier,
                                                               m.future),
            GpuSampleTaken: self._sampled, GpuLost: lambda m: self._lose(self.state.lanes[m.lane], m.why),
            LlmCallEnded: lambda m: self.drafting.llm_call(m.call),
            MemoryToWrite: lambda m: self.store.remember(m.text, m.tags, author=m.author, run_id=self.run_id,
                                                         experiment_id=m.experiment_id),
            CommandGiven: self._command,
            AgentCallsMade: self._agent_calls, ClusterReach: self._reach,
        }
        if hasattr(proposer, "attach"):  # the LLM agents: memories, transcripts, call accounting
            proposer.attach(ProposerContext(
                run_id=run_id, lanes=len(gpus), transcripts=self.logs / "transcripts",
                recall=lambda query, k: [m.text for m in store.recall(query, k)],
                remember=lambda text, tags, author, experiment_id: self.inbox.put(
                    MemoryToWrite(text, tuple(tags), author, experiment_id)),
                report_call=lambda call: self.inbox.put(LlmCallEnded(call)), read_run=self.read_run))

    def read_run(self, experiment_id: int) -> RunEvidence | None:
        """How one run went, for a proposer's `read_run` (safe from any thread: the store and
        the workspace hold their own locks)."""
        return self.store.run_evidence(experiment_id, self.config.metric, self.ws.diff)

    @property
    def run_id(self) -> str:
        return self.state.run_id

    @property
    def frontier(self) -> str:
        return self.state.frontier

    @property
    def lanes(self) -> list[Lane]:
        return self.state.lanes

    @property
    def exit_reason(self) -> str:
        return self.state.exit_reason

    # -- the outside world ----------------------------------------------------------------------

    def submit(self, command: control.Command) -> None:
        """Thread-safe (and signal-safe): the only way to change the engine from outside."""
        self.inbox.put(CommandGiven(command))

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> int:
        self._start()
        try:
            while not self._done():
                self._schedule()
                self.ledger.write_deferred()
                if self._done():
                    break
                try:
                    message = self.inbox.get(timeout=self._wait_time())
                except queue.Empty:
                    continue
                self._handle(message)
                while True:  # drain bursts (progress lines) before the next scheduling pass
                    try:
                        self._handle(self.inbox.get(timeout=0))
                    except queue.Empty:
                        break
        finally:
            self._shutdown()
        return 1 if self.state.failure else 0

    def _agent_calls(self, message: AgentCallsMade) -> None:
        self.ledger.later(self.store.add_events, [
            StoredEvent(call.at, self.run_id, f"agent:{call.tool}", DecisionSource.AUTO.value, call.lane,
                        call.experiment_id, {"client": call.client, **call.detail}) for call in message.calls])

    def _wait_time(self) -> float:
        now = time.monotonic()
        waits = [lane.retry_at - now for lane in self.state.lanes if lane.retry_at > now]
        return max(0.05, min(waits, default=1.0))

    def _handle(self, message: Message) -> None:
        handler = self._handlers.get(type(message))
        if handler is None:  # Inbox.put refuses these; one that got here anyway is a bug of ours
            raise UnknownMessage(f"no handler for {message!r}")
        try:
            handler(message)
        except Exception as e:  # noqa: BLE001 - a bug of ours: log it whole, keep the lanes going
            log.exception("handling %s failed", type(message).__name__)
            self.ledger.emit(events.Notice(events.Level.ERROR, f"internal error while handling "
                                                               f"{type(message).__name__}: {e!r} (see the log)"))

    def _start(self) -> None:
        config, state = self.config, self.state
        self.store.start_run(Run(id=self.run_id, tag=config.tag, repo=str(self.ws.root), started_at=utcnow(),
                                 host=socket.gethostname(),
                                 config=_config_record(config, state.lanes, self.sandbox)))
        self._load_history()
        if self.sampler is not None:
            self.sampler.start()
        for lane in state.lanes:
            self.ledger.lane_changed(lane)
        self.ledger.notice(events.Level.INFO, f"{'resumed' if self.resumed else 'started'} {config.tag} on "
                                              f"{len(state.lanes)} lane(s), frontier {state.frontier[:8]} "
                                              f"({self.ws.branch}); training runs "
                                              + (f"sandboxed ({self.sandbox.summary})" if self.sandbox.active
                                                 else f"not sandboxed ({self.sandbox.summary})")
                           + "".join(f"; {line}" for line in self.announce))
        if self.sandbox.fell_back:  # --sandbox auto found none: said once, where it is seen
            self.ledger.notice(events.Level.WARNING, f"training runs are not sandboxed: {self.sandbox.summary}; "
                                                     f"LLM-written code runs with your rights (apt install "
                                                     f"bubblewrap; --sandbox none to silence this)")

    def _load_history(self) -> None:
        """Rebuild what earlier sessions of this tag learned: measurements, what was tried, and
        the runs a dead supervisor left behind (marked interrupted and queued again)."""
        state = self.state
        for old_run in self.store.run_ids(self.config.tag):
            if old_run != self.run_id:
                self.store.interrupt_unfinished(old_run)
        past = self.store.experiments(tag=self.config.tag)
        requeued = {e.rerun_of for e in past}
        for exp in past:
            state.experiments[exp.id] = exp
            self.ledger.learn(exp)
            if exp.kind is Kind.PROPOSAL and exp.change and exp.status is not Status.REJECTED:
                state.changes.setdefault((exp.change, exp.parent_commit or ""), exp.id)
            if (exp.kind in (Kind.PROPOSAL, Kind.VERIFICATION) and exp.parent_commit
                    and exp.decision_source is DecisionSource.AUTO and exp.status is Status.OK):
                state.judged_against[exp.parent_commit] += 1  # its frontier's replicas are owed for them too
            if exp.decision is Decision.KEEP and (exp.kind in (Kind.PROPOSAL, Kind.VERIFICATION)
                                                  or exp.kind is Kind.BASELINE and state.plateau.since is None):
                state.plateau.since = exp.id  # a resumed line counts from its last keep (or its start)
            if exp.status is Status.INTERRUPTED and exp.id not in requeued and exp.commit:
                self._run_again(exp)
            elif exp.status in (Status.QUEUED, Status.NOT_RUN) and exp.kind is not Kind.CLAIM:
                # What an earlier session never started (queued when a supervisor was killed, or
                # recorded not_run when a night ended) runs now, as it was; a claim's runs belong
                # to that session's claim, and stay as they are.
                if exp.status is Status.NOT_RUN:
                    exp = replace(exp, status=Status.QUEUED, error=None, finished_at=None)
                    self.ledger.save(exp)
                state.pending.append(exp)
        if self.resumed and state.pending:
            self.ledger.notice(events.Level.INFO, f"{len(state.pending)} experiment(s) from the last session "
                                                  f"queued again")

    def _done(self) -> bool:
        """Whether the night is over: it has ended (_ended) and, where it ended doing its work,
        its claim is measured."""
        state, confirmation = self.state, self.confirmation
        if any(lane.run is not None for lane in state.lanes):
            return False
        if confirmation.active is not None:
            if state.quitting:  # a person quit: what never started is not measured
                confirmation.active, state.claiming = None, False
                return self._ended()
            model = confirmation.active.model
            if confirmation.waiting() and any(not lane.lost and lane.model == model for lane in state.lanes):
                return False
            ends_night = confirmation.active.ends_night
            confirmation.settle()
            state.claiming = False
            return ends_night
        if not self._ended():
            return False
        if state.failure or state.quitting or not self.config.confirm:
            return True
        why = confirmation.begin(ends_night=True)
        if why is not None and self.config.confirm_only:  # measuring it was all this session was for
            state.failure = f"no claim to measure: {why}"
            self.ledger.notice(events.Level.ERROR, state.failure)
            return True
        if why is not None:
            self.ledger.notice(events.Level.INFO, f"no claim to measure: {why}")
            return True
        state.claiming = True
        return False

    def _command(self, message: CommandGiven) -> None:
        command = message.command
        if not isinstance(command, control.Confirm):
            self.overrides.apply(command)
            return
        self.ledger.event("confirm", DecisionSource.USER, detail={"by": command.by} if command.by else {}, now=True)
        why = self.confirmation.begin(ends_night=False)
        if why is not None:
            self.ledger.notice(events.Level.WARNING, f"no claim to measure: {why}")
        else:
            self.state.claiming = True

    def _ended(self) -> bool:
        """Whether the night has done what it can (and why, in state.exit_reason)."""
        state = self.state
        if self.config.confirm_only:
            state.exit_reason = "the claim asked for"
            return True
        if state.quitting:
            state.exit_reason = state.exit_reason or "stopped by request"
            return True
        if state.plateau.ended and not any(map(_follow_up, state.pending)):
            state.exit_reason = state.plateau.reason()
            return True
        if state.out_of_budget and not any(map(_follow_up, state.pending)):
            extra = state.started - state.max_experiments
            state.exit_reason = f"{state.max_experiments} experiments run" + (
                f", and {extra} more to judge them" if extra > 0 else "")
            return True
        usable = [lane for lane in state.lanes if not lane.lost]
        if not usable:  # every GPU lost (fell off the bus, or its Ray node died): the night cannot go on
            state.exit_reason = "no lane left"
            state.failure = "every lane is out of service (see the notices above); the night cannot go on"
            self.ledger.notice(events.Level.ERROR, state.failure)
            return True
        if all(lane.exhausted and lane.next is None for lane in usable) and not state.pending:
            failed = [lane for lane in usable if lane.gave_up is not None]
            if len(failed) == len(usable):  # not one lane ended its search: the proposer is broken
                cause = state.proposals_failed or (
                    f"the {self.proposer.name} proposer failed {PROPOSAL_FAILURES_BEFORE_GIVING_UP} times in a row "
                    f"on every lane (last: {failed[-1].gave_up}); check --agent, --base-url and the provider's key")
                state.failure = f"no lane could get a proposal: {cause}"
                self.ledger.notice(events.Level.ERROR, state.failure)
                state.exit_reason = "no lane could get a proposal"
            else:
                state.exit_reason = state.proposals_ended or "the proposer has nothing more to try"
                if state.proposals_ended and not any(
                        e.kind is Kind.PROPOSAL and e.run_id == self.run_id and e.status.finished
                        and e.status is not Status.REJECTED for e in state.experiments.values()):
                    # A limit so low that not one proposal ran: the night did none of its work.
                    state.failure = f"{state.proposals_ended} before any proposal could run: raise --max-cost"
                    self.ledger.notice(events.Level.ERROR, state.failure)
            return True
        return False

    # -- choosing each lane's next run ------------------------------------------------------------

    def _schedule(self) -> None:
        """Give every free lane its next run, then keep waiting proposals on the frontier, then
        let every lane draft ahead. Runs first: with --max-experiments, a lane's draft must not
        take the slot an idle lane could fill now."""
        state = self.state
        for lane in state.lanes:
            if lane.lost and isinstance(lane.next, Ready):  # drafted for a lane that left: another runs it
                state.pending.append(lane.next.experiment)
                lane.next = None
        if state.held is not None:  # the cluster does not answer: nothing new starts
            return
        for lane in state.lanes:
            if lane.lost or lane.run is not None or lane.paused or state.quitting:
                continue
            # Past --max-experiments or a plateau's end, only the runs that judge results in hand go on.
            job = self._next_follow_up(lane) if state.winding_down else self._next_job(lane)
            if job is not None:
                self.launcher.launch(lane, job)
        self.drafting.replay_waiting()
        for lane in state.lanes:
            self.drafting.draft(lane)

    def _next_job(self, lane: Lane) -> Experiment | None:
        state = self.state
        for exp in state.pending:
            if exp.gpu_name in (None, lane.model):
                state.pending.remove(exp)
                return exp
        if self._needs_baseline(lane.model):
            first = not state.measurements.count(state.frontier, lane.model) and not state.history
            return self.ledger.new_experiment(Experiment(
                run_id=self.run_id, lane=-1, kind=Kind.BASELINE, commit=state.frontier, parent_commit=state.frontier,
                gpu_name=lane.model,
                description="baseline" if first else f"baseline: frontier {state.frontier[:7]} on {lane.model}"))
        if isinstance(lane.next, Ready):
            exp, lane.next = lane.next.experiment, None
            return exp
        return None

    def _next_follow_up(self, lane: Lane) -> Experiment | None:
        """A run that judges what is in hand; while the claim is measured, its runs first (and
        only those, for `confirm`: the rest waits for the next night)."""
        state = self.state
        wanted = [lambda e: e.kind is Kind.CLAIM] if state.claiming else []
        if not self.config.confirm_only:
            wanted.append(_follow_up)
        for follows in wanted:
            for exp in state.pending:
                if follows(exp) and exp.gpu_name in (None, lane.model):
                    state.pending.remove(exp)
                    return exp
        return None

    def _needs_baseline(self, model: str) -> bool:
        """The starting point runs on every lane until the noise estimate has a few degrees of
        freedom; after that every new frontier is run again until it has its own replicas (its
        first measurement is the lucky one that got it kept), more of them as more candidates
        are judged against it. Disturbed runs do not count."""
        state = self.state
        wanted = self.judge.policy.replicas_wanted(state.measurements.noise(model),
                                                   state.judged_against[state.frontier],
                                                   sum(1 for lane in state.lanes if lane.model == model))
        have = state.measurements.count(state.frontier, model)
        running = sum(1 for lane in state.lanes if lane.run is not None and lane.model == model
                      and lane.current.commit == state.frontier and lane.current.kind is Kind.BASELINE)
        return have + running < wanted

    # -- messages ----------------------------------------------------------------------------------

    def _progressed(self, message: RunProgressed) -> None:
        now, n, i = utcnow(), message.lane, message.experiment_id
        self.store.add_metrics([MetricPoint(i, p.step, now, p.pct, p.loss, p.lrm, p.dt_ms, p.tok_per_sec, p.mfu,
                                            p.epoch, p.remaining_s) for p in message.points])
        for point in message.points:
            self.ledger.emit(events.RunProgress(n, i, point))

    def _sampled(self, message: GpuSampleTaken) -> None:
        sample = message.sample
        self.store.add_sample(sample)
        # By UUID where the card has one: on a Ray cluster two nodes each have a GPU 0.
        lane = next((lane for lane in self.state.lanes if (lane.gpu.uuid == sample.gpu_uuid if sample.gpu_uuid
                                                          else lane.gpu.index == sample.gpu_index)), None)
        if lane is not None:
            self.ledger.emit(events.GpuSampled(lane.index, sample))

    def _run_ended(self, message: RunEnded) -> None:
        lane, result = self.state.lanes[message.lane], message.result
        # The trainer's own keys stay in `extra`; nothing it prints reaches a link, the kind,
        # the status or the dedup key (those are fields of their own).
        exp = replace(lane.current, status=result.status, summary=result.summary, extra=dict(result.extra),
                      exit_code=result.exit_code, error=result.error, finished_at=result.finished_at)
        lane.run = None
        self.state.finished += 1
        if exp.kind is Kind.BASELINE and exp.status is Status.OK:
            self._measured_run_time(exp)
        self.ledger.save(exp)
        self.ledger.learn(exp)
        self.ledger.emit(events.RunFinished(lane.index, exp))
        if exp.status is not Status.INTERRUPTED:
            self._apply(self.judge.result(self.state, exp))
        elif not self.state.quitting:
            # Not stopped by us: the system failed under it (a Ray node died). The lane goes out
            # of service; the run goes to another lane, once. (Quitting, --resume runs it again.)
            self._lose(lane, result.error or "its run was interrupted")
            if exp.rerun_of is None and exp.commit:
                self._run_again(exp)
                self.ledger.notice(events.Level.WARNING, f"#{exp.id} is queued again for another lane", lane.index)
            return
        self.ledger.lane_changed(lane)

    def _run_again(self, exp: Experiment) -> None:
        """An interrupted run, queued again as a new experiment that names it."""
        self.state.pending.append(self.ledger.new_experiment(Experiment(
            run_id=self.run_id, lane=-1, kind=exp.kind, commit=exp.commit, parent_commit=exp.parent_commit,
            description=exp.description, gpu_name=exp.gpu_name, hypothesis=exp.hypothesis, agent=exp.agent,
            change=exp.change, confirms=exp.confirms, verifies=exp.verifies, reference_for=exp.reference_for,
            drafted_on=exp.drafted_on, touched=exp.touched, notes=exp.notes, rerun_of=exp.id)))

    def _measured_run_time(self, exp: Experiment) -> None:
        """Size the timeouts from what the starting point's runs take, and say so once when
        the target does not train for the budget it was given."""
        total = ((exp.finished_at - exp.started_at).total_seconds() if exp.finished_at and exp.started_at
                 else exp.summary.get("total_seconds"))  # the child's whole life, interpreter start included
        if not total:
            return
        first = self.state.run_seconds is None
        self.state.run_seconds = max(self.state.run_seconds or 0.0, float(total))
        training = exp.summary.get("training_seconds")
        budget = self.config.run_budget
        stepped = bool(os.environ.get("AUTORESEARCH_STEP_BUDGET"))  # runs of fixed steps (the demo)
        if first and not stepped and training is not None and abs(training - budget) > 0.5 * budget:
            self.ledger.notice(events.Level.WARNING,
                               f"the target trained {training:g} s, not the {budget:g} s budget it was given: it sets "
                               f"its own budget; runs now time out after "
                               f"{self.config.timeout_after(self.state.run_seconds):.0f} s (--timeout to choose)")

    def _decided(self, exp: Experiment, rule: Rule | None) -> None:
        """Every decision, as the ledger records it: the proposer learns, the plateau counts."""
        self.drafting.observe(exp)
        plateau = self.state.plateau
        match plateau.judged(exp, rule):
            case Step.WARN:
                self.ledger.notice(events.Level.WARNING,
                                   f"plateau: {plateau.misses} experiments without a keep since "
                                   f"{plateau.since_text()}; the proposers are asked for a different direction, and "
                                   f"the night ends after {plateau.after} more without one (--plateau)",
                                   topic=events.Topic.PLATEAU)
                self.ledger.event("plateau", DecisionSource.AUTO, experiment_id=exp.id,
                                  detail={"step": Step.WARN.value, "misses": plateau.misses, "since": plateau.since})
            case Step.END:
                self.ledger.notice(events.Level.WARNING, f"{plateau.reason()}: no new proposal runs; the runs "
                                                         f"under way finish and are judged",
                                   topic=events.Topic.PLATEAU)
                self.ledger.event("plateau", DecisionSource.AUTO, experiment_id=exp.id,
                                  detail={"step": Step.END.value, "misses": plateau.misses, "since": plateau.since})

    def _apply(self, actions: list[Action]) -> None:
        """Carry out what the judging rules said, in order."""
        state, ledger = self.state, self.ledger
        for action in actions:
            match action:
                case Decide(experiment_id=n, decision=decision, rule=rule, reason=reason, verdict=verdict):
                    ledger.decide(state.experiments[n], decision, DecisionSource.AUTO, reason, rule=rule,
                                  verdict=verdict)
                case Confirm(experiment_id=n, rule=rule, reason=reason, verdict=verdict):
                    ledger.confirm(n, rule, reason, verdict)
                case Queue(experiment=template):
                    state.pending.appendleft(ledger.new_experiment(template))
                case Promote(experiment_id=n, reason=reason, verdict=verdict):
                    self._apply(self.promotion.promote(state.experiments[n], DecisionSource.AUTO, reason,
                                                       verdict=verdict))
                case FrontierFailed():
                    self._frontier_failed(action)
                case _:
                    raise TypeError(f"not a judging action: {action!r}")

    def _frontier_failed(self, action: FrontierFailed) -> None:
        state, exp = self.state, self.state.experiments[action.experiment_id]
        state.baseline_failures[action.key] = action.failures
        if not action.stop:
            self.ledger.notice(events.Level.WARNING, f"the frontier failed on lane {exp.lane} ({exp.status.value}: "
                                                     f"{exp.error}); running it again", exp.lane)
            return
        state.failure = (f"the frontier {(exp.commit or '')[:8]} fails to run on {exp.gpu_name} "
                         f"({exp.status.value}: {exp.error}); see {exp.log_path}")
        self.ledger.notice(events.Level.ERROR, state.failure + "; stopping")
        state.exit_reason = "the frontier fails to run"
        state.quitting = Quitting.GRACEFUL

    def _lose(self, lane: Lane, why: str) -> None:
        if lane.lost:  # said once: a dead node is seen by its telemetry and by its run
            return
        lane.lost = True
        if lane.run is not None:
            lane.run.handle.stop(Status.CRASH)
        self.ledger.notice(events.Level.ERROR, f"lane {lane.index} is out of service: {why}", lane.index,
                           topic=events.Topic.LANE_LOST)
        self.ledger.lane_changed(lane, why)

    def _reach(self, message: ClusterReach) -> None:
        """The Ray cluster stopped answering: nothing new starts (no run, no proposal) until it
        answers again; if it never does, the night ends with every result kept, the runs in
        flight recorded as interrupted (--resume runs them again) and a non-zero exit."""
        state = self.state
        match message.reach:
            case Reach.UNREACHABLE:
                state.held = message.why
                self.ledger.notice(events.Level.WARNING, f"{message.why}: no new run or proposal until it does; "
                                                         f"the runs in flight go on")
            case Reach.BACK:
                state.held = None
                self.ledger.notice(events.Level.INFO, f"{message.why}: going on")
            case Reach.LOST:
                running = [lane for lane in state.lanes if lane.run is not None]
                state.failure = f"lost the Ray cluster: {message.why}"
                self.ledger.notice(events.Level.ERROR, f"{state.failure}; the night ends, "
                                                       f"{len(running)} run(s) in flight end as interrupted and "
                                                       f"--resume runs them again once the cluster is back")
                state.exit_reason = "lost the Ray cluster"
                state.quitting = Quitting.NOW
                for lane in running:
                    lane.run.handle.stop(Status.INTERRUPTED)

    # -- the end -------------------------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        self.ledger.write_deferred()
        self._settle_unstarted()
        for close in self.on_close:  # the MCP server: its last calls reach the log below
            try:
                close()
            except Exception:  # noqa: BLE001
                log.exception("closing %s failed", close)
        for lane in self.state.lanes:
            if lane.run is not None:  # only after an error of ours: never leave a child behind
                lane.run.handle.stop(Status.INTERRUPTED)
                lane.run.handle.join(self.config.kill_grace_seconds + 5)
        close = getattr(self.proposer, "close", None)
        if close is not None:  # stops proposals in flight, lets memories being written finish
            try:
                close()
            except Exception:  # noqa: BLE001
                log.exception("closing the proposer failed")
        self.drafting.close()
        if self.sampler is not None:
            self.sampler.stop()
        self._drain_records()
        self.ledger.write_deferred()
        self.store.finish_run(self.run_id)
        self.store.flush()
        state = self.state
        claim = self.confirmation.claim
        self.ledger.emit(events.Finished(state.exit_reason or "error", state.finished, state.frontier,
                                         {"run_id": self.run_id, "branch": self.ws.branch,
                                          "noise": self.ledger.noise_told(),
                                          "claim": claim.text() if claim is not None else None}))

    def _settle_unstarted(self) -> None:
        """The night is over: what was queued or drafted and never started says so, with why,
        rather than claim a future it will not have (--resume queues it again)."""
        state = self.state
        why = f"not run: the night ended ({state.exit_reason or 'an error of ours'})"
        for exp in list(state.experiments.values()):
            if exp.status is Status.QUEUED:
                self.ledger.save(replace(exp, status=Status.NOT_RUN, error=why, finished_at=utcnow()))

    def _drain_records(self) -> None:
        """What the proposer sent while it closed (its last memories and LLM calls) is still
        written; anything else that arrives now has no lane left to act on."""
        while True:
            try:
                message = self.inbox.get(timeout=0)
            except queue.Empty:
                return
            if isinstance(message, (MemoryToWrite, LlmCallEnded, RunProgressed, GpuSampleTaken, AgentCallsMade)):
                self._handle(message)


def _follow_up(exp: Experiment) -> bool:
    """A run that finishes judging an experiment already run (a confirmation, a verification
    on a moved frontier, the reference it needs): it runs even past --max-experiments, so the
    last results of a session are judged, not left as "measured again as #N"."""
    return (exp.kind in (Kind.CONFIRM, Kind.VERIFICATION, Kind.CLAIM)
            or (exp.kind is Kind.BASELINE and exp.reference_for is not None))


def policy_for(config: Config) -> Policy | GreedyPolicy:
    if config.keep_rule == "greedy":
        return GreedyPolicy()
    return Policy(floor=config.noise_floor, baseline_runs=config.baseline_runs)


def _config_record(config: Config, lanes: list[Lane], sandbox: SandboxChoice) -> dict:
    """What the runs table remembers of a session's configuration (never a secret)."""
    return {"gpus": [f"{lane.gpu.model}#{lane.gpu.index}" for lane in lanes], "agent": config.agent,
            "sandbox": {"asked": config.sandbox, "active": sandbox.active, "summary": sandbox.summary},
            "budget": config.budget, "review": config.review, "noise_floor": config.noise_floor,
            "keep_rule": config.keep_rule, "baseline_runs": config.baseline_runs,
            "max_experiments": config.max_experiments, "plateau": config.plateau,
            "confirm": {"on": config.confirm, "runs": config.confirm_runs, "max": config.confirm_max},
            "environment": environment.describe([lane.gpu for lane in lanes]), "target": {"editable": list(config.target.editable),
                                                                  "command": config.target.command,
                                                                  "metric": config.target.metric,
                                                                  "direction": config.target.direction,
                                                                  "constraints": {c.key: c.ceiling for c in
                                                                                  config.target.constraints}}}

"""Drafting: each lane's next proposal is written ahead on a proposal thread while its run
trains, replayed when the frontier moves, checked against the rules every proposal obeys (only
editable files, never a change already tried), and the proposer is told how its proposals were
judged. Runs on the supervisor's thread; only the proposer itself and the git replays run on
the proposal threads, and they answer through the inbox."""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

from agents.proposer import Outcome, PlateauNote, ProposalError, ProposalRequest, Proposer
from results.records import Experiment, Kind, LlmCall, Status
from results.store import utcnow
from scheduler.config import Config
from scheduler.runs.workspace import Workspace, WorkspaceError

from . import events
from .inbox import Inbox, ProposalDrafted, ProposalReplayed
from .ledger import Ledger
from .state import Drafting as DraftingSlot, Held, Lane, Ready, Replaying, ResearchState

log = logging.getLogger("autoresearch.supervisor")

PROPOSAL_RETRY_SECONDS = 5.0
PROPOSAL_FAILURES_BEFORE_GIVING_UP = 5  # in a row, for failures that will not pass by themselves
PROPOSAL_RETRY_MAX_SECONDS = 300.0


class Drafting:
    def __init__(self, state: ResearchState, config: Config, workspace: Workspace, proposer: Proposer,
                 inbox: Inbox, ledger: Ledger):
        self.state, self.config, self.ws, self.proposer = state, config, workspace, proposer
        self.inbox, self.ledger = inbox, ledger
        self.pool = ThreadPoolExecutor(max_workers=max(1, len(state.lanes)), thread_name_prefix="propose")

    # -- asking for a proposal ----------------------------------------------------------------------

    def draft(self, lane: Lane) -> None:
        state = self.state
        if (lane.next is not None or lane.exhausted or lane.lost or state.quitting
                or time.monotonic() < lane.retry_at or state.winding_down or self._budget_spoken_for()):
            return
        request = ProposalRequest(lane=lane.index, worktree=lane.draft_dir, parent_commit=state.frontier,
                                  editable_files=self.config.target.editable, history=tuple(state.history),
                                  frontier_val_bpb=self._frontier_value(lane.model), attempt=lane.attempts,
                                  metric=state.metric, plateau=self._plateau(),
                                  constraints=self.config.target.constraints)
        lane.attempts += 1
        future = self.pool.submit(self._make_proposal, request)
        lane.next = DraftingSlot(future)
        future.add_done_callback(lambda f, n=lane.index: self.inbox.put(ProposalDrafted(n, f)))
        if lane.run is None:
            self.ledger.lane_changed(lane)

    def _plateau(self) -> PlateauNote | None:
        plateau = self.state.plateau
        return PlateauNote(plateau.misses, plateau.since) if plateau.told else None

    def _frontier_value(self, model: str) -> float | None:
        score = self.state.reference(self.state.frontier, model)
        return self.state.metric.unscore(score) if score is not None else None

    def _budget_spoken_for(self) -> bool:
        """With --max-experiments, draft no more proposals than there are runs left."""
        state = self.state
        if state.max_experiments is None:
            return False
        waiting = sum(lane.next is not None for lane in state.lanes)
        return state.started + len(state.pending) + waiting >= state.max_experiments

    def _make_proposal(self, request: ProposalRequest):
        """On a proposal thread: the proposer edits the draft worktree; the change is committed."""
        self.ws.checkout(request.worktree, request.parent_commit)
        proposal = self.proposer.propose(request)
        message = proposal.description if not proposal.hypothesis else f"{proposal.description}\n\n{proposal.hypothesis}"
        return proposal, self.ws.commit_draft(request.worktree, request.parent_commit, message)

    def drafted(self, lane: Lane, future: Future) -> None:
        lane.next = None
        calls, lane.llm_calls = lane.llm_calls, []
        try:
            proposal, draft = future.result()
        except Exception as e:  # noqa: BLE001 - ProposalError, a git problem, or a bug in a proposer
            self._failed(lane, e)
            return
        lane.failures = 0
        lane.draft_head = draft.commit
        exp = self.ledger.new_experiment(Experiment(
            run_id=self.state.run_id, lane=lane.index, kind=Kind.PROPOSAL, commit=draft.commit,
            parent_commit=draft.parent, description=proposal.description, hypothesis=proposal.hypothesis,
            agent=proposal.agent or self.proposer.name, change=proposal.change, touched=tuple(draft.touched),
            notes=dict(proposal.extra)))
        if calls:
            self.ledger.later(self.ledger.store.link_llm_calls, calls, exp.id)
        why = self._refusal(exp)
        if why is not None:
            self.ledger.reject(exp, why)
            self.ledger.notice(events.Level.WARNING, f"lane {lane.index}: rejected #{exp.id} ({why})", lane.index)
            return
        self.ledger.emit(events.ProposalReady(lane.index, exp))
        lane.next = Held(exp) if self.config.review else Ready(exp)
        self.ledger.lane_changed(lane, exp.description)

    def _refusal(self, exp: Experiment) -> str | None:
        """Why a proposal may not run, whoever proposed it; None when it may."""
        forbidden = [p for p in exp.touched if p not in self.config.target.editable]
        if forbidden:
            return f"changes {', '.join(forbidden)}, which only a person may edit"
        if exp.change:
            first = self.state.changes.setdefault((exp.change, exp.parent_commit or ""), exp.id)
            if first != exp.id:
                return f"the same change as #{first}, which was tried on this frontier already"
        return None

    def _failed(self, lane: Lane, error: Exception) -> None:
        lane.failures += 1
        transient = getattr(error, "transient", False)
        wait = min(PROPOSAL_RETRY_SECONDS * (2 ** min(lane.failures - 1, 6) if transient else lane.failures),
                   PROPOSAL_RETRY_MAX_SECONDS)
        lane.retry_at = time.monotonic() + wait
        if isinstance(error, (WorkspaceError, ProposalError)):
            message = str(error)
        else:
            log.error("proposer failed on lane %s", lane.index, exc_info=error)
            message = f"{type(error).__name__}: {error}"
        if getattr(error, "final", False):  # no lane asks again this session
            ended = getattr(error, "exhausted", False)  # a limit reached (not a failure), or a broken agent
            first = self.state.proposals_ended is None and self.state.proposals_failed is None
            if ended:
                self.state.proposals_ended = self.state.proposals_ended or message
            else:
                self.state.proposals_failed = self.state.proposals_failed or message
            for other in self.state.lanes:
                if not other.exhausted:
                    other.exhausted = True
                    other.gave_up = None if ended else message
            # A limit reached is said here; a broken agent's cause once, as the session's failure.
            said = message if ended else f"lane {lane.index}: {self.proposer.name} can make no proposal"
            if first:  # a lane whose proposal was under way may fail the same way: said once
                self.ledger.notice(events.Level.WARNING, f"{said}: the lanes stop proposing; the runs under way "
                                                         f"finish and are judged", lane.index,
                                   topic=events.Topic.SPENDING_LIMIT if ended else None)
        elif transient:  # throttling or an outage: the lane waits, and says why, but never gives up
            self.ledger.notice(events.Level.WARNING, f"lane {lane.index}: no proposal ({message}); asking again "
                                                     f"in {wait:.0f} s", lane.index)
        elif lane.failures >= PROPOSAL_FAILURES_BEFORE_GIVING_UP:
            lane.exhausted = True
            lane.gave_up = None if getattr(error, "exhausted", False) else message
            self.ledger.notice(events.Level.WARNING, f"lane {lane.index}: no proposal after {lane.failures} tries "
                                                     f"({message}); it stops proposing", lane.index)
        else:
            self.ledger.notice(events.Level.WARNING, f"lane {lane.index}: no proposal ({message}); trying again",
                               lane.index)
        self.ledger.lane_changed(lane, f"no proposal: {message}")

    # -- keeping proposals on the frontier ------------------------------------------------------------

    def replay_waiting(self) -> None:
        """Replay the proposals waiting for a busy GPU onto a frontier that moved, now, on the
        proposal threads, rather than when their lane frees up, when the GPU would wait for git.
        A lane that is free replays its own at launch (`rebase_now`): waiting for a thread
        would only add to that. Called on every scheduling pass; it starts nothing twice."""
        frontier = self.state.frontier
        for lane in self.state.lanes:
            if lane.run is None or not isinstance(lane.next, Ready) or lane.next.experiment.parent_commit == frontier:
                continue
            exp = lane.next.experiment
            future = self.pool.submit(self.ws.replay, lane.draft_dir, exp.commit, frontier, worktree_at=lane.draft_head)
            lane.next = Replaying(future, exp, frontier)
            future.add_done_callback(lambda f, n=lane.index, e=exp, fr=frontier:
                                     self.inbox.put(ProposalReplayed(n, e, fr, f)))

    def replayed(self, lane: Lane, exp: Experiment, frontier: str, future: Future) -> None:
        lane.next = None
        try:
            new = future.result()
        except Exception as e:  # noqa: BLE001 - git failed: the lane drafts afresh
            log.error("replaying #%s on %s failed", exp.id, frontier[:8], exc_info=e)
            new = None
        lane.draft_head = new
        exp = self._rebased(exp, frontier, new)
        if exp is not None:
            lane.next = Ready(exp)  # the frontier may have moved again meanwhile: replay_waiting sees to it
        self.ledger.lane_changed(lane)

    def rebase_now(self, lane: Lane, exp: Experiment) -> Experiment | None:
        """A free lane's proposal drafted on a frontier that has moved since: replay it here."""
        new = self.ws.replay(lane.draft_dir, exp.commit, self.state.frontier, worktree_at=lane.draft_head)
        lane.draft_head = new
        return self._rebased(exp, self.state.frontier, new)

    def _rebased(self, exp: Experiment, frontier: str, new: str | None) -> Experiment | None:
        if new is None:
            self.ledger.save(replace(exp, status=Status.REJECTED, finished_at=utcnow(),
                                     error=f"conflicts with the new frontier {frontier[:8]}; drafted again"))
            key = (exp.change or "", exp.parent_commit or "")
            if self.state.changes.get(key) == exp.id:
                del self.state.changes[key]  # it never ran: proposing it again is fair
            return None
        self.ledger.keep_commit(exp.id, new)
        return replace(exp, commit=new, parent_commit=frontier, drafted_on=exp.drafted_on or exp.parent_commit)

    # -- what the proposer hears back ---------------------------------------------------------------------

    def llm_call(self, call: LlmCall) -> None:
        call_id = self.ledger.store.add_llm_call(call)
        lanes = self.state.lanes
        if call.role == "worker" and call.lane is not None and 0 <= call.lane < len(lanes):
            lanes[call.lane].llm_calls.append(call_id)  # linked to its experiment once there is one
        self.ledger.emit(events.LlmCallFinished(call.lane, call.role, call.model, call.outcome, call.input_tokens,
                                                call.output_tokens, call.cost_usd, call.latency_ms,
                                                call.experiment_id))

    def observe(self, exp: Experiment) -> None:
        """Tell a proposer that learns (the LLM agents) how one of its proposals was judged."""
        observe = getattr(self.proposer, "observe", None)
        if observe is None or exp.kind not in (Kind.PROPOSAL, Kind.VERIFICATION) or exp.decision is None:
            return
        state = self.state
        original = state.experiments.get(exp.verifies, exp) if exp.verifies is not None else exp
        reference = state.reference(exp.parent_commit, exp.gpu_name)
        try:
            observe(Outcome(exp.id, exp.lane, exp.description, exp.hypothesis, exp.change, exp.status.value,
                            state.value(exp), state.metric.unscore(reference) if reference is not None else None,
                            exp.decision.value, exp.decision_reason or "", original.notes.get("direction")))
        except Exception:  # noqa: BLE001 - a proposer's bookkeeping must not stop the research
            log.exception("the proposer failed to take in #%s", exp.id)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

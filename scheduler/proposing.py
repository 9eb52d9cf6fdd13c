"""The supervisor's proposing half: each lane's next proposal drafted ahead on a proposal
thread while its run trains, proposals replayed when the frontier moves, the proposer told how
its proposals were judged, and its LLM calls accounted for. Mixed into `Supervisor`, whose
state it shares; it runs on the supervisor's thread like everything else (only the proposer
itself and the git replays run on the proposal threads)."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from agents.proposer import Outcome, ProposalError, ProposalRequest
from results.records import Experiment, Status
from results.store import utcnow

from . import events
from .lanes import Lane
from .workspace import WorkspaceError

log = logging.getLogger("autoresearch.supervisor")

PROPOSAL_RETRY_SECONDS = 5.0
PROPOSAL_FAILURES_BEFORE_GIVING_UP = 5  # in a row, for failures that will not pass by themselves
PROPOSAL_RETRY_MAX_SECONDS = 300.0


class Proposing:
    def _rebase(self, lane: Lane, exp: Experiment) -> Experiment | None:
        """A proposal drafted from a frontier that has moved since: replay it on the new one."""
        new = self.ws.replay(lane.draft_dir, exp.commit, self.frontier, worktree_at=lane.draft_head)
        lane.draft_head = new
        return self._rebased(exp, self.frontier, new)

    def _rebased(self, exp: Experiment, frontier: str, new: str | None) -> Experiment | None:
        if new is None:
            self._save(replace(exp, status=Status.REJECTED, finished_at=utcnow(),
                               error=f"conflicts with the new frontier {frontier[:8]}; drafted again"))
            change = exp.extra.get("change")
            if change and self.changes.get(change) == exp.id:
                del self.changes[change]  # it never ran: proposing it again on the new frontier is fair
            return None
        self.ws.keep_commit(exp.id, new)
        return replace(exp, commit=new, parent_commit=frontier,
                       extra={**exp.extra, "drafted_on": exp.extra.get("drafted_on", exp.parent_commit)})

    def _frontier_moved(self) -> None:
        """Replay the proposals waiting for a GPU onto the new frontier now, on the proposal
        threads, rather than when their lane frees up, when the GPU would wait for git. A lane
        that is free now replays its own at launch: waiting for a thread would only add to that."""
        for lane in self.lanes:
            exp = lane.ready
            if exp is None or lane.handle is None or lane.drafting is not None or exp.parent_commit == self.frontier:
                continue
            lane.ready = None
            frontier = self.frontier
            lane.drafting = self.pool.submit(self.ws.replay, lane.draft_dir, exp.commit, frontier,
                                             worktree_at=lane.draft_head)
            lane.drafting.add_done_callback(lambda f, n=lane.index, e=exp, fr=frontier:
                                            self.inbox.put(("rebased", n, e, fr, f)))

    def _rebase_done(self, lane: Lane, exp: Experiment, frontier: str, future) -> None:
        lane.drafting = None
        try:
            new = future.result()
        except Exception as e:  # noqa: BLE001 - git failed: the lane drafts afresh
            log.error("replaying #%s on %s failed", exp.id, frontier[:8], exc_info=e)
            new = None
        lane.draft_head = new
        exp = self._rebased(exp, frontier, new)
        if exp is not None:
            lane.ready = exp
            self._frontier_moved()  # it may have moved again meanwhile
        self._lane_changed(lane)

    def _draft(self, lane: Lane) -> None:
        if (lane.exhausted or lane.lost or self.quitting or time.monotonic() < lane.retry_at
                or self._out_of_budget() or self._budget_spoken_for()):
            return
        request = ProposalRequest(lane=lane.index, worktree=lane.draft_dir, parent_commit=self.frontier,
                                  editable_files=self.config.target.editable, history=tuple(self.history),
                                  frontier_val_bpb=self._reference(self.frontier, lane.model), attempt=lane.attempts)
        lane.attempts += 1
        lane.drafting = self.pool.submit(self._make_proposal, request)
        lane.drafting.add_done_callback(lambda f, n=lane.index: self.inbox.put(("proposal", n, f)))
        if lane.handle is None:
            self._lane_changed(lane)

    def _budget_spoken_for(self) -> bool:
        """With --max-experiments, draft no more proposals than there are runs left."""
        if self.config.max_experiments is None:
            return False
        waiting = sum((lane.ready is not None) + (lane.held is not None) + (lane.drafting is not None)
                      for lane in self.lanes)
        return self.started + len(self.pending) + waiting >= self.config.max_experiments

    def _make_proposal(self, request: ProposalRequest):
        """On a proposal thread: the proposer edits the draft worktree; the change is committed."""
        self.ws.checkout(request.worktree, request.parent_commit)
        proposal = self.proposer.propose(request)
        message = proposal.description if not proposal.hypothesis else f"{proposal.description}\n\n{proposal.hypothesis}"
        return proposal, self.ws.commit_draft(request.worktree, request.parent_commit, message)

    def _proposal_done(self, lane: Lane, future) -> None:
        lane.drafting = None
        calls, lane.llm_calls = lane.llm_calls, []
        try:
            proposal, draft = future.result()
        except Exception as e:  # noqa: BLE001 - ProposalError, a git problem, or a bug in a proposer
            lane.failures += 1
            transient = getattr(e, "transient", False)
            wait = PROPOSAL_RETRY_SECONDS * (2 ** min(lane.failures - 1, 6) if transient else lane.failures)
            lane.retry_at = time.monotonic() + min(wait, PROPOSAL_RETRY_MAX_SECONDS)
            if isinstance(e, (WorkspaceError, ProposalError)):
                message = str(e)
            else:
                log.error("proposer failed on lane %s", lane.index, exc_info=e)
                message = f"{type(e).__name__}: {e}"
            if transient:  # throttling or an outage: the lane waits, and says why, but never gives up
                self._notice("warning", f"lane {lane.index}: no proposal ({message}); asking again in "
                                        f"{min(wait, PROPOSAL_RETRY_MAX_SECONDS):.0f} s", lane.index)
            elif lane.failures >= PROPOSAL_FAILURES_BEFORE_GIVING_UP:
                lane.exhausted = True
                self._notice("warning", f"lane {lane.index}: no proposal after {lane.failures} tries ({message}); "
                                        "it stops proposing", lane.index)
            else:
                self._notice("warning", f"lane {lane.index}: no proposal ({message}); trying again", lane.index)
            self._lane_changed(lane, f"no proposal: {message}")
            return
        lane.failures = 0
        lane.draft_head = draft.commit
        exp = self._new_experiment("proposal", draft.commit, draft.parent, proposal.description,
                                   hypothesis=proposal.hypothesis, agent=proposal.agent or self.proposer.name,
                                   extra={**proposal.extra, "change": proposal.change, "touched": list(draft.touched)},
                                   lane=lane.index)
        if calls:
            self._later(self.store.link_llm_calls, calls, exp.id)
        forbidden = [p for p in draft.touched if p not in self.config.target.editable]
        duplicate = self.changes.get(proposal.change) if proposal.change else None
        if proposal.change and duplicate is None:
            self.changes[proposal.change] = exp.id
        if forbidden or duplicate is not None:
            why = (f"changes {', '.join(forbidden)}, which only a person may edit" if forbidden else
                   f"the same change as #{duplicate}, which was tried already")
            rejected = replace(exp, status=Status.REJECTED, finished_at=utcnow(), error=why)
            self._save(rejected)
            self._remember(rejected)
            self._notice("warning", f"lane {lane.index}: rejected #{exp.id} ({rejected.error})", lane.index)
            return
        self._emit(events.ProposalReady(lane.index, exp))
        if self.config.review:
            lane.held = exp
        else:
            lane.ready = exp
        self._lane_changed(lane, exp.description)

    def _llm_call(self, call) -> None:
        call_id = self.store.add_llm_call(call)
        if call.role == "worker" and call.lane is not None and 0 <= call.lane < len(self.lanes):
            self.lanes[call.lane].llm_calls.append(call_id)  # linked to its experiment once there is one
        self._emit(events.LlmCallFinished(call.lane, call.role, call.model, call.outcome, call.input_tokens,
                                          call.output_tokens, call.cost_usd, call.latency_ms, call.experiment_id))

    def _observe(self, exp: Experiment) -> None:
        """Tell a proposer that learns (the LLM agents) how one of its proposals was judged."""
        observe = getattr(self.proposer, "observe", None)
        if observe is None or exp.kind not in ("proposal", "verification") or exp.decision is None:
            return
        original = self.experiments.get(exp.extra.get("verifies"), exp)
        try:
            observe(Outcome(exp.id, exp.lane, exp.description, exp.hypothesis, exp.extra.get("change"),
                            exp.status.value, self._metric(exp), self._reference(exp.parent_commit, exp.gpu_name or ""),
                            exp.decision.value, exp.decision_reason or "", original.extra.get("direction")))
        except Exception:  # noqa: BLE001 - a proposer's bookkeeping must not stop the research
            log.exception("the proposer failed to take in #%s", exp.id)

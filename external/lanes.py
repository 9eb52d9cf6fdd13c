"""The lanes' side of external agents: a proposer whose proposals come from MCP clients.

When a lane wants its next proposal, the engine calls `propose` on one of its proposal threads,
as for any proposer, with the lane's draft worktree checked out at the frontier. Here that call
opens the lane to claims and waits: a client claims it (`claim`), edits the worktree or hands
in a patch, and submits (`submit`); the submission, checked against every rule a built-in
proposal obeys, becomes the `Proposal` the waiting call returns, and the engine commits, queues
and judges it like any other. A claim left without a submission past its time is released and
the worktree reset, so a client that died never holds a GPU idle for long."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from agents.proposer import Proposal, ProposalError, ProposalRequest

from .changes import Refused, apply_patch, change_key, check_paths, revert_patch

DEFAULT_CLAIM_TIMEOUT_S = 1800.0  # a coding agent thinking over one change takes minutes, not hours
AGENT_PREFIX = "external:"


@dataclass
class _Opening:
    """A lane waiting for an external proposal."""

    request: ProposalRequest
    claimed_by: str | None = None
    claimed_at: float = 0.0
    busy: bool = False  # a submission is being checked: neither expiry nor another submit may touch it
    submission: Proposal | None = None


@dataclass(frozen=True)
class Claim:
    lane: int
    worktree: Path
    editable_files: tuple[str, ...]
    frontier_commit: str
    frontier_value: float | None
    metric: str
    expires_in_s: float
    plateau: str | None = None  # the brief's plateau text, once the line went --plateau without a keep


@dataclass(frozen=True)
class Submitted:
    lane: int
    submission: str  # the id the engine's ProposalReady will carry in the experiment's notes
    change: str


class ExternalProposer:
    """A Proposer (agents/proposer.py) for `--agent external`. Thread-safe: the engine's proposal
    threads call `propose`, the MCP server's thread everything else."""

    name = "external"
    drafting_detail = "waiting for an agent"  # what a lane's pane says while it waits for a submission

    def __init__(self, changed_files: Callable[[Path], list[str]], reset: Callable[[Path, str], None],
                 claim_timeout_s: float = DEFAULT_CLAIM_TIMEOUT_S, clock: Callable[[], float] = time.monotonic):
        self._changed_files, self._reset = changed_files, reset
        self.claim_timeout_s = claim_timeout_s
        self._clock = clock
        self._cond = threading.Condition()
        self._open: dict[int, _Opening] = {}
        self._tried: dict[str, dict[str, str]] = {}  # parent commit -> {change key: its description}, this session
        self._closed = False

    # -- the engine's side --------------------------------------------------------------------------

    def propose(self, request: ProposalRequest) -> Proposal:
        with self._cond:
            self._open[request.lane] = _Opening(request)
            self._cond.notify_all()
        try:
            while True:
                expired = None
                with self._cond:
                    opening = self._open[request.lane]
                    if opening.submission is not None:
                        return opening.submission
                    if self._closed:
                        raise ProposalError("the session is ending; no agent submitted a change", exhausted=True)
                    if (opening.claimed_by is not None and not opening.busy
                            and self._clock() - opening.claimed_at > self.claim_timeout_s):
                        expired, opening.claimed_by = opening.claimed_by, None
                    else:
                        self._cond.wait(1.0)
                if expired is not None:  # its edits are undone for the next client
                    self._reset(request.worktree, request.parent_commit)
        finally:
            with self._cond:
                self._open.pop(request.lane, None)
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- the clients' side --------------------------------------------------------------------------

    def open_lanes(self) -> dict[int, str | None]:
        """Lanes waiting for a proposal, and who holds each (None: free to claim)."""
        with self._cond:
            return {lane: o.claimed_by for lane, o in sorted(self._open.items())}

    def claim(self, client: str, wait_s: float = 0.0) -> Claim:
        deadline = self._clock() + max(0.0, wait_s)
        with self._cond:
            while True:
                if self._closed:
                    raise Refused("the session is ending; no lane will be given out")
                free = [lane for lane, o in sorted(self._open.items()) if o.claimed_by is None]
                if free:
                    opening = self._open[free[0]]
                    opening.claimed_by, opening.claimed_at = client, self._clock()
                    r = opening.request
                    return Claim(r.lane, r.worktree, r.editable_files, r.parent_commit, r.frontier_val_bpb,
                                 r.metric.name, self.claim_timeout_s,
                                 r.plateau.text() if r.plateau is not None else None)
                left = deadline - self._clock()
                if left <= 0:
                    held = sum(o.claimed_by is not None for o in self._open.values())
                    raise Refused(f"no lane is free: {held} claimed, the others training or drafting; "
                                  f"claim again in a minute (research_status shows the lanes)")
                self._cond.wait(min(left, 1.0))

    def release(self, client: str, lane: int) -> None:
        with self._cond:
            opening = self._held(client, lane)
            opening.claimed_by = None
            request = opening.request
            self._cond.notify_all()
        self._reset(request.worktree, request.parent_commit)

    def submit(self, client: str, lane: int, description: str, hypothesis: str = "",
               patch: str | None = None) -> Submitted:
        description = " ".join(description.split())
        if not description:
            raise Refused("a submission needs a one-line description of the change")
        with self._cond:
            opening = self._held(client, lane)
            opening.busy = True
            request = opening.request
            tried = dict(self._tried.get(request.parent_commit, {}))
        applied = False
        try:
            if patch:
                apply_patch(request.worktree, patch, request.editable_files)
                applied = True
            touched = self._changed_files(request.worktree)
            if not touched:
                raise Refused("the worktree has no change against the frontier: edit the editable files or "
                              "pass a patch")
            check_paths(touched, request.editable_files)
            key = change_key(request.worktree, request.editable_files)
            earlier = {p.change: p for p in request.history if p.parent == request.parent_commit and p.change}
            if key in tried or key in earlier:
                before = earlier.get(key)
                said = f"{before.description}: {before.decision or before.status}" if before else tried[key]
                raise Refused(f"this exact change was already tried on this frontier ({said}); try another")
        except Refused:
            if applied:
                revert_patch(request.worktree, patch)
            with self._cond:
                opening.busy = False
            raise
        submission = uuid.uuid4().hex[:12]
        with self._cond:
            self._tried.setdefault(request.parent_commit, {})[key] = description
            opening.busy = False
            opening.submission = Proposal(description=description, hypothesis=hypothesis.strip(), change=key,
                                          agent=f"{AGENT_PREFIX}{client}",
                                          extra={"submission": submission, "client": client})
            self._cond.notify_all()
        return Submitted(lane, submission, key)

    def _held(self, client: str, lane: int) -> _Opening:
        """The lane's opening if `client` holds it; otherwise a refusal that says whose it is."""
        opening = self._open.get(lane)
        if opening is None:
            raise Refused(f"lane {lane} is not waiting for a proposal (it is training, or has one); "
                          f"claim_lane gives you one that is")
        if opening.claimed_by is None:
            raise Refused(f"lane {lane} is not claimed: call claim_lane first")
        if opening.claimed_by != client:
            raise Refused(f"lane {lane} is claimed by another client ({opening.claimed_by}), not by you")
        if opening.busy:
            raise Refused(f"a submission for lane {lane} is being checked already")
        return opening

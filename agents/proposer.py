"""What a proposal maker is, seen from the engine.

The engine hands a proposer a clean worktree checked out at the frontier; the proposer edits
the editable files there and says what it did. The engine (not the proposer) checks which
files changed, commits, runs and decides. Several lanes ask for proposals at once, each from
its own thread, so a proposer must be safe to call concurrently."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from results.constraints import Constraint
from results.evidence import RunEvidence
from results.metric import Metric
from results.records import LlmCall


class ProposalError(Exception):
    """The proposer could not make a proposal this time (the engine records it and asks again
    later); the message is one sentence for the log. `transient`: the cause will pass (a rate
    limit, a provider outage), so the lane waits and asks again rather than giving up.
    `exhausted`: not a failure at all: the proposer has nothing left to try here (a moved
    frontier may give it more), so a line that ends on it ended its search, not in error.
    `final`: the proposer will make no more proposals this session, for a reason the session's
    end names (a spending limit reached); every lane stops asking at once."""

    def __init__(self, message: str, *, transient: bool = False, exhausted: bool = False, final: bool = False):
        super().__init__(message)
        self.transient = transient
        self.exhausted = exhausted
        self.final = final


@dataclass(frozen=True)
class PastExperiment:
    """One earlier experiment of this research line, as a proposer sees it."""

    description: str
    change: str | None  # the proposer's own key for the change, when it gave one
    val_bpb: float | None  # the research metric's value (val_bpb unless the target says otherwise)
    status: str  # ok, crash, oom, ...
    decision: str | None  # keep, discard, or None while undecided
    notes: dict = field(default_factory=dict)  # what its proposer recorded with it (Proposal.extra)
    parent: str | None = None  # the commit it was drafted on: a change tried there may be tried again elsewhere
    # How the run went, for a row a researcher would read (read_run tells the rest).
    experiment_id: int | None = None
    steps: int | None = None
    tok_per_s: float | None = None
    peak_vram_mb: float | None = None
    gain_sigma: float | None = None  # its measured gain over its reference, in noise sigmas, once judged


@dataclass(frozen=True)
class PlateauNote:
    """The line has plateaued: this many judged experiments in a row without a keep."""

    misses: int
    since: int | None  # the experiment they run from (the last keep, or the start)

    def text(self) -> str:
        since = f"#{self.since}" if self.since is not None else "the start"
        return (f"The line has plateaued: {self.misses} experiments in a row without a keep since {since}. "
                f"More variations of what was tried will not move it: choose a different direction (another "
                f"part of the model, the optimizer, the schedule, the batch), a bolder change, or a "
                f"simplification that buys speed.")


@dataclass(frozen=True)
class ProposalRequest:
    lane: int
    worktree: Path  # clean, checked out at parent_commit; edit files here
    parent_commit: str
    editable_files: tuple[str, ...]  # relative to worktree
    history: tuple[PastExperiment, ...] = ()  # oldest first, every lane's
    frontier_val_bpb: float | None = None  # the parent's measured metric on this lane's GPU model
    attempt: int = 0  # how many proposals this lane has asked for before; varies the choice
    metric: Metric = field(default_factory=Metric)  # what the experiments are judged by, and which way is better
    plateau: PlateauNote | None = None  # set once the line has gone --plateau experiments without a keep
    constraints: tuple[Constraint, ...] = ()  # ceilings a run must respect, or it is discarded


@dataclass(frozen=True)
class Proposal:
    description: str  # one line, shown in the table and written to results.tsv
    hypothesis: str = ""
    change: str | None = None  # a stable key for the change, so it is never proposed twice
    agent: str = ""  # who made it: "offline-mutator", "anthropic:claude-...", ...
    extra: dict = field(default_factory=dict)


class Proposer(Protocol):
    name: str

    def propose(self, request: ProposalRequest) -> Proposal:
        """Edit the files in request.worktree and describe the change. Raise ProposalError
        when no proposal can be made."""
        ...


@dataclass(frozen=True)
class ProposerContext:
    """What the engine lends a proposer that wants more than requests (the LLM agents): the
    research line's memories, a place for transcripts, and a way to account for its calls.
    Given once, through the proposer's optional `attach(context)`."""

    run_id: str
    lanes: int
    transcripts: Path
    recall: Callable[[str, int], list[str]]  # (query, k) -> memory texts, best first
    remember: Callable[[str, tuple[str, ...], str, int | None], None]  # (text, tags, author, experiment_id)
    report_call: Callable[[LlmCall], None]  # every LLM call, for the llm_calls table and the header
    # experiment id -> how that run went (results/evidence.py), or None for an unknown id
    read_run: Callable[[int], RunEvidence | None] = lambda experiment_id: None


@dataclass(frozen=True)
class Outcome:
    """A judged proposal, for a proposer's optional `observe(outcome)`: what it learns from."""

    experiment_id: int
    lane: int
    description: str
    hypothesis: str | None
    change: str | None
    status: str
    val_bpb: float | None
    reference: float | None  # the frontier's val_bpb it was compared with
    decision: str
    reason: str
    direction: str | None = None

"""A lane: one GPU (or CPU slot), its two worktrees, and what it is doing now."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from results.records import Experiment

from .executor import RunHandle
from .gpus import Gpu


@dataclass
class Lane:
    gpu: Gpu
    run_dir: Path  # the worktree its training runs work in
    draft_dir: Path  # the worktree its next proposal is written in, while a run trains
    paused: bool = False
    lost: bool = False
    exhausted: bool = False  # its proposer has nothing more to offer
    handle: RunHandle | None = None
    current: Experiment | None = None  # the experiment training now
    ready: Experiment | None = None  # a proposal committed and waiting for the GPU
    held: Experiment | None = None  # review mode: a proposal waiting for approve/reject
    drafting: Future | None = None  # a proposal being made (or replayed on a new frontier)
    llm_calls: list[int] = field(default_factory=list)  # llm_calls rows of the proposal being drafted
    draft_head: str | None = None  # the commit draft_dir holds, clean: a ready proposal runs there
    attempts: int = 0  # proposals asked for so far
    failures: int = 0  # proposals in a row that failed
    retry_at: float = 0.0  # monotonic time before which it does not ask again after a failure

    @property
    def index(self) -> int:
        return self.gpu.lane

    @property
    def model(self) -> str:
        return self.gpu.model

    @property
    def busy(self) -> bool:
        return self.handle is not None

    def state(self) -> str:
        if self.lost:
            return "lost"
        if self.handle is not None:
            return "baseline" if self.current is not None and self.current.kind == "baseline" else "training"
        if self.paused:
            return "paused"
        if self.held is not None:
            return "review"
        if self.drafting is not None:
            return "proposing"
        return "done" if self.exhausted else "idle"

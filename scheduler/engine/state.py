"""The state of one research line, owned by the supervisor's thread and nobody else.

Everything the engine knows lives in one `ResearchState`: the frontier, every measurement,
every experiment, the runs waiting for a lane, the changes already tried, what the proposers
are told, and the lanes. Other threads never touch it; they send messages (scheduler/engine/inbox.py).

A lane does two things at once -- its GPU trains one experiment while its next proposal is
drafted in a second worktree -- so it has two slots, each holding a typed payload or nothing:
`run` (a `Running` child) and `next` (`Drafting`, `Replaying`, `Ready` or `Held`). Its one
public state (`LaneState`) is read from the slots; a person's pause is a flag of its own, so no
consumer ever learns "paused" from a message's text."""

from __future__ import annotations

import enum
from collections import Counter, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from agents.proposer import PastExperiment
from results.metric import Metric
from results.records import Experiment, Kind
from scheduler.gpus import Gpu
from scheduler.runs.executor import RunHandle

from .noise import Measurements
from .plateau import Plateau


class LaneState(enum.StrEnum):
    """What a lane is doing, as its pane shows it. A str enum: JSON carries the plain word."""

    IDLE = "idle"
    PROPOSING = "proposing"  # its GPU is free and its next proposal is being drafted
    REVIEW = "review"  # a proposal waits for a person to approve or reject it
    BASELINE = "baseline"  # training the unmodified frontier
    TRAINING = "training"
    PAUSED = "paused"  # by a person; a run that was training finishes first
    LOST = "lost"  # its GPU fell off the bus: out of service for good
    DONE = "done"  # its proposer has nothing more to try

    @property
    def training(self) -> bool:
        return self in (LaneState.BASELINE, LaneState.TRAINING)


class Quitting(enum.StrEnum):
    GRACEFUL = "graceful"  # no new runs; the running ones finish
    NOW = "now"  # the running ones are stopped too


# -- a lane's two slots -----------------------------------------------------------------------

@dataclass(frozen=True)
class Running:
    experiment: Experiment
    handle: RunHandle


@dataclass(frozen=True)
class Drafting:
    """A proposer is writing the lane's next proposal on a proposal thread."""

    future: Future


@dataclass(frozen=True)
class Replaying:
    """A ready proposal is being replayed onto a frontier that moved, on a proposal thread."""

    future: Future
    experiment: Experiment
    frontier: str


@dataclass(frozen=True)
class Ready:
    """A proposal committed and waiting for the lane's GPU."""

    experiment: Experiment


@dataclass(frozen=True)
class Held:
    """Review mode: a proposal waiting for a person."""

    experiment: Experiment


Next = Drafting | Replaying | Ready | Held


@dataclass
class Lane:
    gpu: Gpu
    run_dir: Path  # the worktree its training runs work in
    draft_dir: Path  # the worktree its next proposal is written in, while a run trains
    run: Running | None = None
    next: Next | None = None
    paused: bool = False
    lost: bool = False
    exhausted: bool = False  # it asks for no more proposals ...
    gave_up: str | None = None  # ... because they kept failing (the last error), not because none are left
    draft_head: str | None = None  # the commit draft_dir holds, clean: a ready proposal runs there
    llm_calls: list[int] = field(default_factory=list)  # llm_calls rows of the proposal being drafted
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
    def current(self) -> Experiment | None:
        """The experiment training now."""
        return self.run.experiment if self.run is not None else None

    @property
    def working(self) -> bool:
        """A proposal thread is busy for this lane (drafting or replaying)."""
        return isinstance(self.next, (Drafting, Replaying))

    @property
    def state(self) -> LaneState:
        if self.lost:
            return LaneState.LOST
        if self.run is not None:
            return LaneState.BASELINE if self.run.experiment.kind is Kind.BASELINE else LaneState.TRAINING
        if self.paused:
            return LaneState.PAUSED
        if isinstance(self.next, Held):
            return LaneState.REVIEW
        if self.working:
            return LaneState.PROPOSING
        return LaneState.DONE if self.exhausted else LaneState.IDLE


@dataclass
class ResearchState:
    """One research line as the engine sees it. Plain data: the judging rules are tested on
    states built by hand (tests/test_judge.py)."""

    run_id: str
    frontier: str
    lanes: list[Lane]
    metric: Metric = field(default_factory=Metric)
    measurements: Measurements = field(default_factory=Measurements)
    experiments: dict[int, Experiment] = field(default_factory=dict)
    pending: deque[Experiment] = field(default_factory=deque)  # queued runs any lane of the right model may take
    # (a change's key, the commit it was made on) -> the first experiment that made it there: the
    # same change on a frontier that has moved since is a new experiment, and may be tried again
    changes: dict[tuple[str, str], int] = field(default_factory=dict)
    history: list[PastExperiment] = field(default_factory=list)  # what proposers are told, oldest first
    baseline_failures: dict[tuple[str, str], int] = field(default_factory=dict)
    judged_against: Counter[str] = field(default_factory=Counter)  # commit -> candidates decided against it
    max_experiments: int | None = None  # runs this session may start (follow-ups aside)
    started: int = 0  # runs started by this session
    finished: int = 0
    quitting: Quitting | None = None
    failure: str | None = None  # why the research cannot go on, when it cannot
    held: str | None = None  # why nothing new may start for now (the Ray cluster does not answer)
    proposals_ended: str | None = None  # why the proposer makes no more proposals (a spending limit)
    proposals_failed: str | None = None  # why it cannot make any (a model that never calls a tool)
    run_seconds: float | None = None  # the longest a run of the starting point took, start to end
    plateau: Plateau = field(default_factory=lambda: Plateau(0))  # judged in a row without a keep
    claiming: bool = False  # the claim's runs (confirmation.py) have the lanes: nothing new is drafted
    exit_reason: str = ""

    @property
    def out_of_budget(self) -> bool:
        return self.max_experiments is not None and self.started >= self.max_experiments

    @property
    def winding_down(self) -> bool:
        """No new proposal runs or is drafted; only the runs that judge results already in hand:
        --max-experiments reached, the line ended on a plateau, or the claim is being measured."""
        return self.out_of_budget or self.plateau.ended or self.claiming

    def reference(self, commit: str | None, model: str | None) -> float | None:
        """A commit's mean score on a GPU model, lower is better; None if never measured."""
        return self.measurements.mean(commit, model or "") if commit else None

    def value(self, exp: Experiment) -> float | None:
        return self.metric.value(exp)

    def original(self, exp: Experiment) -> Experiment:
        """The experiment a confirmation or a rerun repeats (itself for anything else)."""
        original = self.experiments.get(exp.confirms or exp.rerun_of, exp)
        return original if original.kind in (Kind.PROPOSAL, Kind.VERIFICATION) else exp

    def lane_running(self, experiment_id: int) -> Lane | None:
        return next((lane for lane in self.lanes if lane.current is not None and lane.current.id == experiment_id),
                    None)

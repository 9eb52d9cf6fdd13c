"""What the store holds, as the dataclasses that cross package boundaries."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class Status(enum.StrEnum):
    """Where an experiment is, or how it ended."""

    QUEUED = "queued"
    RUNNING = "running"
    OK = "ok"
    CRASH = "crash"  # non-zero exit
    OOM = "oom"  # CUDA out of memory
    NAN = "nan"  # the trainer printed FAIL
    TIMEOUT = "timeout"  # ran past budget plus grace
    HUNG = "hung"  # no output for too long
    KILLED = "killed"  # stopped by the user
    INTERRUPTED = "interrupted"  # the supervisor died while it ran
    REJECTED = "rejected"  # never ran: touched a file it may not, or a person rejected it
    NOT_RUN = "not_run"  # never started: the night ended first (why, in the experiment's `error`)

    @property
    def finished(self) -> bool:
        """Settled: it will not change any more (unless a later session runs it after all)."""
        return self not in (Status.QUEUED, Status.RUNNING)

    @property
    def ran(self) -> bool:
        """It ran to an end, well or badly: a result or a failure to count."""
        return self not in NEVER_RAN


NEVER_RAN = frozenset({Status.QUEUED, Status.RUNNING, Status.REJECTED, Status.NOT_RUN})
NEVER_RAN_SQL = "(" + ", ".join(f"'{s.value}'" for s in sorted(NEVER_RAN)) + ")"  # for a NOT IN


class Decision(enum.StrEnum):
    KEEP = "keep"
    DISCARD = "discard"


class DecisionSource(enum.StrEnum):
    AUTO = "auto"
    USER = "user"


class Kind(enum.StrEnum):
    """Why an experiment runs. A str enum: rows and JSON carry the plain word."""

    PROPOSAL = "proposal"  # a change a proposer made
    BASELINE = "baseline"  # a commit measured as it is: the frontier, or a reference
    CONFIRM = "confirm"  # a win within noise of the margin, run again
    VERIFICATION = "verification"  # a winner replayed on a frontier that moved, measured there
    RERUN = "rerun"  # a person asked for another measurement
    CLAIM = "claim"  # the start or the final frontier, run again side by side for the night's claim


# The summary keys every run is expected to print; each has its own column. Any other key a
# trainer prints is kept in Experiment.extra, never rejected.
SUMMARY_COLUMNS = {
    "val_bpb": float, "training_seconds": float, "total_seconds": float, "peak_vram_mb": float,
    "mfu_percent": float, "total_tokens_M": float, "num_steps": int, "num_params_M": float,
    "depth": int, "attention_backend": str, "startup_seconds": float, "seed": str, "device_name": str,
}


@dataclass(frozen=True)
class Run:
    """One supervisor session: a tag on a repository, from start to quit."""

    id: str
    tag: str
    repo: str
    started_at: datetime
    config: dict = field(default_factory=dict)
    host: str = ""


@dataclass(frozen=True)
class Experiment:
    """One proposal and what became of it. `id` is assigned by the store.

    The engine's links between experiments are fields of their own; `extra` holds only what
    the trainer printed beyond the known summary keys, so nothing a trainer prints (the code
    it runs was written by an LLM) can change a link, a kind, a status or a dedup key."""

    run_id: str
    lane: int
    description: str
    status: Status = Status.QUEUED
    id: int | None = None
    kind: Kind = Kind.PROPOSAL
    gpu_index: int | None = None
    gpu_uuid: str | None = None
    gpu_name: str | None = None
    worktree: str | None = None
    branch: str | None = None
    parent_commit: str | None = None
    commit: str | None = None
    hypothesis: str | None = None
    agent: str | None = None
    decision: Decision | None = None
    decision_source: DecisionSource | None = None
    decision_reason: str | None = None
    summary: dict = field(default_factory=dict)  # SUMMARY_COLUMNS values, typed
    extra: dict = field(default_factory=dict)  # any other summary keys, as the trainer printed them
    change: str | None = None  # the change's key: a change with the same key is never run twice
    rerun_of: int | None = None  # run again: after an interruption, or because a person asked
    confirms: int | None = None  # the experiment this one re-runs to confirm a close win
    verifies: int | None = None  # the winner this one measures again on a moved frontier
    reference_for: int | None = None  # the experiment waiting for this baseline to be judged
    drafted_on: str | None = None  # the frontier a proposal was first drafted on, when replayed since
    touched: tuple[str, ...] = ()  # the files the proposal changed
    notes: dict = field(default_factory=dict)  # the proposer's own record: an LLM's direction, a transcript
    started_at: datetime | None = None
    finished_at: datetime | None = None
    log_path: str | None = None
    exit_code: int | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if type(self.kind) is not Kind:  # "baseline" from a caller or a row becomes Kind.BASELINE
            object.__setattr__(self, "kind", Kind(self.kind))

    @property
    def val_bpb(self) -> float | None:
        return self.summary.get("val_bpb")


@dataclass(frozen=True)
class MetricPoint:
    """One progress line of a run."""

    experiment_id: int
    step: int
    t: datetime
    pct: float | None = None
    loss: float | None = None
    lrm: float | None = None
    dt_ms: float | None = None
    tok_per_sec: float | None = None
    mfu: float | None = None
    epoch: int | None = None
    remaining_s: float | None = None


@dataclass(frozen=True)
class GpuSample:
    """One telemetry reading of one GPU; None where the card does not report a value."""

    t: datetime
    gpu_index: int
    gpu_uuid: str | None = None
    util_pct: float | None = None
    mem_used_mb: float | None = None
    mem_total_mb: float | None = None
    temp_c: float | None = None
    power_w: float | None = None
    sm_clock_mhz: float | None = None
    throttle_reasons: str | None = None


@dataclass(frozen=True)
class LlmCall:
    t: datetime
    run_id: str
    role: str  # worker | orchestrator | memory
    provider: str
    model: str
    outcome: str  # ok | error | rate_limited | timeout
    lane: int | None = None
    experiment_id: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None  # None when the model's price is unknown
    latency_ms: float | None = None
    error: str | None = None
    cache_read_tokens: int | None = None  # of input_tokens, read from the provider's prompt cache
    cache_write_tokens: int | None = None  # of input_tokens, written to it


@dataclass(frozen=True)
class Memory:
    text: str
    tags: tuple[str, ...] = ()
    author: str = ""
    run_id: str | None = None
    experiment_id: int | None = None
    id: int | None = None
    t: datetime | None = None
    score: float | None = None  # relevance, set by recall


@dataclass(frozen=True)
class Event:
    """Anything else worth a row: overrides, pauses, promotions, errors, the noise estimate."""

    t: datetime
    run_id: str
    kind: str
    source: str = "auto"  # auto | user
    lane: int | None = None
    experiment_id: int | None = None
    detail: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FrontierMove:
    """The frontier moved to `commit`: by the keep of `experiment_id`, or back (`undo`) when a
    person discarded the frontier's own commit. From the log's `frontier` events."""

    commit: str
    previous: str | None
    experiment_id: int | None
    undo: bool = False


@dataclass(frozen=True)
class LeaderboardRow:
    rank: int
    experiment_id: int
    commit: str | None
    value: float | None  # the metric's (results/metric.py)
    delta: float | None  # against the starting point, in the metric's own sign
    status: Status
    decision: Decision | None
    lane: int
    description: str
    peak_vram_mb: float | None


@dataclass(frozen=True)
class SpendingRow:
    """What a session's (or the whole log's) LLM calls cost, and what they bought."""

    calls: int
    input_tokens: int
    cache_read_tokens: int
    output_tokens: int
    cost_usd: float | None  # None when no call had a price
    unpriced_calls: int  # answered calls without a price: the cost is at least cost_usd
    experiments: int  # proposals that ran to a result (ok or crashed)
    kept: int  # of them, kept

    def per(self, count: int) -> float | None:
        return self.cost_usd / count if self.cost_usd is not None and count else None


@dataclass(frozen=True)
class NoiseRow:
    """The latest run-to-run noise estimate of a session on one GPU model, from its events."""

    gpu_model: str
    sigma: float | None
    dof: int
    sigma_used: float | None  # what margins used: the upper confidence bound while dof were few
    margin: float | None  # the improvement a single run needed over the frontier

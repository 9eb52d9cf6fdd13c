"""What the engine tells its consumers (the TUI, the headless printer), as small immutable
records. Every event also has a JSON form for `--no-ui`: one object per line, with the event's
name under "event"."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from results.claim import Claim
from results.records import DecisionSource, Experiment, GpuSample
from scheduler.runs.runparse import Progress

from .noise import Rule, Ruling
from .state import LaneState


class Level(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class LaneChanged:
    lane: int
    state: LaneState
    detail: str = ""
    paused: bool = False  # a person paused it (a lane still training says so here, not in its state)

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", LaneState(self.state))  # "training" from a caller: the enum


@dataclass(frozen=True)
class ProposalReady:
    lane: int
    experiment: Experiment


@dataclass(frozen=True)
class RunStarted:
    lane: int
    experiment: Experiment
    pid: int | None = None  # the child's process (and process group) id


@dataclass(frozen=True)
class RunProgress:
    lane: int
    experiment_id: int
    progress: Progress


@dataclass(frozen=True)
class RunFinished:
    lane: int
    experiment: Experiment


@dataclass(frozen=True)
class Decided:
    experiment_id: int
    decision: Ruling  # keep | discard | confirm (run it again first)
    source: DecisionSource
    reason: str
    delta: float | None = None  # reference - candidate, as scores (positive: the candidate is better)
    margin: float | None = None  # the improvement it needed to be kept
    rule: Rule | None = None  # which rule decided (scheduler/engine/noise.py)
    sigma: float | None = None  # the noise estimate the comparison used, and its degrees of freedom
    dof: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "decision", Ruling(self.decision))
        object.__setattr__(self, "source", DecisionSource(self.source))
        if self.rule is not None:
            object.__setattr__(self, "rule", Rule(self.rule))


@dataclass(frozen=True)
class NoiseEstimated:
    """The run-to-run noise on a GPU model changed: a new replica, a confirmation, a run set aside."""

    gpu_model: str
    sigma: float | None  # the pooled estimate
    dof: int
    sigma_used: float | None  # what margins use (its upper confidence bound while dof are few)
    margin: float  # the improvement a single run needs over the frontier now


@dataclass(frozen=True)
class FrontierAdvanced:
    commit: str
    previous: str
    experiment_id: int | None
    value: float | None = None  # the new frontier's measured metric, when a keep moved it


@dataclass(frozen=True)
class GpuSampled:
    lane: int
    sample: GpuSample


class Topic(enum.StrEnum):
    """What a notice is about, where someone away from the screen should hear of it
    (notifications pick notices by topic, never by their text)."""

    PLATEAU = "plateau"  # the line went --plateau experiments without a keep (or ends for it)
    LANE_LOST = "lane_lost"  # a GPU or its node is gone
    SPENDING_LIMIT = "spending_limit"  # --max-cost reached: the lanes stop proposing


@dataclass(frozen=True)
class Notice:
    """Something a person should read: a warning, an error of ours, a lost GPU."""

    level: Level
    message: str
    lane: int | None = None
    topic: Topic | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "level", Level(self.level))  # "error" from a caller becomes Level.ERROR
        if self.topic is not None:
            object.__setattr__(self, "topic", Topic(self.topic))


@dataclass(frozen=True)
class LlmCallFinished:
    """One call to an LLM provider ended (a worker drafting a proposal, the orchestrator, a
    memory); tokens and cost for the header, the outcome for a lane that keeps failing."""

    lane: int | None
    role: str  # worker | orchestrator | memory
    model: str
    outcome: str  # ok | error | rate_limited | timeout
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None  # None when the model's price is unknown
    latency_ms: float | None = None
    experiment_id: int | None = None


@dataclass(frozen=True)
class Claimed:
    """The claim is measured: the frontier against the start (results/claim.py)."""

    claim: Claim


@dataclass(frozen=True)
class Finished:
    """The supervisor has stopped; nothing follows."""

    reason: str
    experiments: int
    frontier: str
    detail: dict = field(default_factory=dict)


Event = (LaneChanged | ProposalReady | RunStarted | RunProgress | RunFinished | Decided | NoiseEstimated
         | FrontierAdvanced | GpuSampled | LlmCallFinished | Notice | Claimed | Finished)

_NAMES = {LaneChanged: "lane", ProposalReady: "proposal", RunStarted: "run_started", RunProgress: "progress",
          RunFinished: "run_finished", Decided: "decision", NoiseEstimated: "noise",
          FrontierAdvanced: "frontier", GpuSampled: "gpu",
          LlmCallFinished: "llm_call", Notice: "notice", Claimed: "claim", Finished: "finished"}


def event_name(event) -> str:
    return _NAMES[type(event)]


def _plain(value):
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None  # NaN and infinity are not JSON
    return value


_PROGRESS_FIELDS = tuple(f.name for f in dataclasses.fields(Progress))
_SAMPLE_FIELDS = tuple(f.name for f in dataclasses.fields(GpuSample))


def _finite(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def to_json(event) -> str:
    # The two high-rate events are encoded field by field: dataclasses.asdict deep-copies and
    # was most of the supervisor's CPU time at 8 lanes x 20 lines/s (bench/bench_engine.py).
    if type(event) is RunProgress:
        p = event.progress
        return json.dumps({"event": "progress", "lane": event.lane, "experiment_id": event.experiment_id,
                           "progress": {f: _finite(getattr(p, f)) for f in _PROGRESS_FIELDS}}, separators=(",", ":"))
    if type(event) is GpuSampled:
        sample = event.sample
        fields = {f: _finite(getattr(sample, f)) for f in _SAMPLE_FIELDS}
        fields["t"] = sample.t.isoformat()
        return json.dumps({"event": "gpu", "lane": event.lane, "sample": fields}, separators=(",", ":"))
    body = {"event": event_name(event)}
    for f in dataclasses.fields(event):
        value = getattr(event, f.name)
        body[f.name] = _plain(dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value)
    return json.dumps(body, separators=(",", ":"))

"""What the app needs of the engine, and nothing more: the lanes' devices, a way to send
commands, and (for the live app) the blocking `run` it drives on a worker thread.

Tests and the benchmark build one by hand, with a fake `submit` and no `run`, and feed the app
events themselves; `EngineLink.of` builds the real one from a Supervisor."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from results.metric import Metric
from scheduler.engine import control
from scheduler.runs.sandbox import SandboxChoice


@dataclass(frozen=True)
class LaneInfo:
    lane: int
    gpu_index: int | None  # None for a CPU lane
    gpu_name: str
    memory_total_mb: float | None = None


@dataclass
class EngineLink:
    tag: str
    lanes: list[LaneInfo]
    submit: Callable[[control.Command], None]
    run: Callable[[], int] | None = None  # blocks until the research ends; returns the exit code
    repo: Path | None = None  # where `git diff` runs for the detail screen
    store: object | None = None  # results.store.Store: the experiments table is reloaded from it
    review: bool = False
    metric: Metric = field(default_factory=Metric)
    max_cost: float | None = None  # the session's LLM spending limit in US dollars, if any
    sandbox: SandboxChoice | None = None  # how training runs are confined; None: not said (tests)
    agents_url: str | None = None  # the MCP server external agents reach this session at, if any

    @classmethod
    def of(cls, supervisor, config, store, agents_url: str | None = None) -> "EngineLink":
        lanes = [LaneInfo(lane.index, lane.gpu.index, lane.gpu.name, lane.gpu.memory_total_mb)
                 for lane in supervisor.lanes]
        return cls(tag=config.tag, lanes=lanes, submit=supervisor.submit, run=supervisor.run,
                   repo=supervisor.ws.root, store=store, review=config.review, metric=config.metric,
                   max_cost=config.max_cost, sandbox=supervisor.sandbox, agents_url=agents_url)

"""The engine's inbox: every message another thread may send the supervisor's thread, one frozen
dataclass per kind. The supervisor dispatches on the type; a message of any other type is
refused when it is sent (`UnknownMessage`), so a mistake shows where it was made instead of
being dropped on the floor."""

from __future__ import annotations

import queue
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime

from results.records import Experiment, GpuSample, LlmCall
from scheduler.runs.executor import Reach, RunResult
from scheduler.runs.runparse import Progress

from . import control


@dataclass(frozen=True)
class RunProgressed:
    """Progress lines a run printed (its watcher thread reads them in batches)."""

    lane: int
    experiment_id: int
    points: tuple[Progress, ...]


@dataclass(frozen=True)
class RunEnded:
    lane: int
    result: RunResult


@dataclass(frozen=True)
class ProposalDrafted:
    """A proposal thread finished drafting (the future holds the proposal and its commit, or
    the proposer's error)."""

    lane: int
    future: Future


@dataclass(frozen=True)
class ProposalReplayed:
    """A ready proposal was replayed onto `frontier` (the future holds the new commit, or None
    when it conflicts)."""

    lane: int
    experiment: Experiment
    frontier: str
    future: Future


@dataclass(frozen=True)
class GpuSampleTaken:
    sample: GpuSample


@dataclass(frozen=True)
class GpuLost:
    lane: int
    why: str


@dataclass(frozen=True)
class LlmCallEnded:
    call: LlmCall


@dataclass(frozen=True)
class MemoryToWrite:
    """A lesson a proposer wants kept: written by the supervisor's thread, like every row."""

    text: str
    tags: tuple[str, ...]
    author: str
    experiment_id: int | None = None


@dataclass(frozen=True)
class CommandGiven:
    command: control.Command


@dataclass(frozen=True)
class AgentCall:
    """An external agent called one of the MCP server's tools: an events row, with the client's
    name and what it asked (never its token)."""

    at: datetime
    client: str
    tool: str
    detail: dict
    lane: int | None = None
    experiment_id: int | None = None


@dataclass(frozen=True)
class AgentCallsMade:
    """The calls of the last second, together: eight agents polling once a second would
    otherwise wake the loop eight times a second for a row each."""

    calls: tuple[AgentCall, ...]


@dataclass(frozen=True)
class ClusterReach:
    """The Ray cluster's head stopped (or went back to) answering the supervisor."""

    reach: Reach
    why: str


Message = (RunProgressed | RunEnded | ProposalDrafted | ProposalReplayed | GpuSampleTaken | GpuLost | LlmCallEnded
           | MemoryToWrite | CommandGiven | AgentCallsMade | ClusterReach)
MESSAGE_TYPES: frozenset[type] = frozenset(Message.__args__)


class UnknownMessage(TypeError):
    pass


class Inbox:
    """A queue that takes only messages. `put` is safe from any thread and from signal
    handlers (queue.SimpleQueue is reentrant)."""

    def __init__(self):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()

    def put(self, message: Message) -> None:
        if type(message) not in MESSAGE_TYPES:
            raise UnknownMessage(f"the engine's inbox takes {', '.join(sorted(t.__name__ for t in MESSAGE_TYPES))}; "
                                 f"not {message!r}")
        self._queue.put(message)

    def get(self, timeout: float | None = None) -> Message:
        """The next message; raises queue.Empty after `timeout` seconds (0: do not wait)."""
        if timeout == 0:
            return self._queue.get_nowait()
        return self._queue.get(timeout=timeout)

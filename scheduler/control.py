"""What may change the engine's state from outside: the TUI's keys and the headless signals
send these, and nothing else mutates the supervisor."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keep:
    experiment_id: int


@dataclass(frozen=True)
class Discard:
    experiment_id: int


@dataclass(frozen=True)
class Approve:
    """Review mode: let a held proposal run."""

    experiment_id: int


@dataclass(frozen=True)
class Reject:
    experiment_id: int


@dataclass(frozen=True)
class PauseLane:
    lane: int


@dataclass(frozen=True)
class ResumeLane:
    lane: int


@dataclass(frozen=True)
class StopRun:
    lane: int


@dataclass(frozen=True)
class Rerun:
    experiment_id: int


@dataclass(frozen=True)
class Quit:
    """now=False: propose nothing more and let the running experiments finish; now=True: stop
    them too."""

    now: bool = False


Command = Keep | Discard | Approve | Reject | PauseLane | ResumeLane | StopRun | Rerun | Quit

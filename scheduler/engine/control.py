"""What may change the engine's state from outside: the TUI's keys and the headless signals
send these, and nothing else mutates the supervisor.

Every command a person gives is an override, recorded in the events table with when (the
row's time) and who: `by` names the person and the tool ("ada via tui"); empty when unknown."""

from __future__ import annotations

import signal
from dataclasses import dataclass


@dataclass(frozen=True)
class Keep:
    experiment_id: int
    by: str = ""


@dataclass(frozen=True)
class Discard:
    experiment_id: int
    by: str = ""


@dataclass(frozen=True)
class Approve:
    """Review mode: let a held proposal run."""

    experiment_id: int
    by: str = ""


@dataclass(frozen=True)
class Reject:
    experiment_id: int
    by: str = ""


@dataclass(frozen=True)
class PauseLane:
    lane: int
    by: str = ""


@dataclass(frozen=True)
class ResumeLane:
    lane: int
    by: str = ""


@dataclass(frozen=True)
class StopRun:
    lane: int
    by: str = ""


@dataclass(frozen=True)
class Rerun:
    experiment_id: int
    by: str = ""


@dataclass(frozen=True)
class Quit:
    """now=False: propose nothing more and let the running experiments finish; now=True: stop
    them too."""

    now: bool = False
    by: str = ""


@dataclass(frozen=True)
class Confirm:
    """Measure the claim now (scheduler/engine/confirmation.py): the frontier against the start,
    side by side; the night goes on once it is in."""

    by: str = ""


Command = Keep | Discard | Approve | Reject | PauseLane | ResumeLane | StopRun | Rerun | Quit | Confirm


def install_signal_handlers(submit) -> None:
    """SIGINT/SIGTERM: the first asks for a graceful quit, the next for an immediate one."""
    count = [0]

    def handler(signum, frame):
        count[0] += 1
        submit(Quit(now=count[0] > 1))

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)

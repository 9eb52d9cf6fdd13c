"""The record of every tool call an external agent makes: an events row each, with the client's
name, written by the engine like every row. Calls gather here and reach the engine's inbox a
second at a time, so agents polling research_status cost the supervisor's loop one wake-up a
second, not one per call (bench/bench_mcp.py)."""

from __future__ import annotations

import threading
from typing import Callable

from results.store import utcnow
from scheduler.engine.inbox import AgentCall

FLUSH_INTERVAL_S = 1.0


class CallLog:
    def __init__(self, send: Callable[[tuple[AgentCall, ...]], None], interval_s: float = FLUSH_INTERVAL_S):
        self._send, self._interval = send, interval_s
        self._lock = threading.Lock()
        self._calls: list[AgentCall] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, client: str, tool: str, detail: dict, lane: int | None = None,
                 experiment_id: int | None = None) -> None:
        with self._lock:
            self._calls.append(AgentCall(utcnow(), client, tool, detail, lane, experiment_id))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mcp-call-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()

    def flush(self) -> None:
        with self._lock:
            calls, self._calls = self._calls, []
        if calls:
            self._send(tuple(calls))

    def close(self) -> None:
        """Stop, and hand over what is left: the engine writes it before it closes the log."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.flush()

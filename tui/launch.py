"""Starting the TUI around an engine: `autoresearch_tui/startup.py` (the composition root) calls
`run_tui` when --no-ui is not given, and gets the supervisor's exit code back."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from scheduler.engine import control
from scheduler.engine.control import install_signal_handlers

from .app import ResearchApp
from .link import EngineLink

log = logging.getLogger("autoresearch.tui")

JOIN_SECONDS = 60.0  # after the app closed: the runs get SIGTERM, then SIGKILL after the grace


def run_tui(make_supervisor: Callable, config, store, agents_url: str | None = None) -> int:
    """`make_supervisor(sink)` builds the engine with the app's sink. The app runs the engine
    on a worker thread, stays open after it finishes until a person quits, and returns its
    exit code; however the app closes, no run outlives it."""
    app: ResearchApp | None = None

    def sink(event) -> None:
        if app is not None:
            app.sink(event)

    supervisor = make_supervisor(sink)
    app = ResearchApp(EngineLink.of(supervisor, config, store, agents_url), freeze_after_start=True)

    def on_signal(command) -> None:  # SIGTERM (or SIGINT from `kill`): as headless, and then close
        app.quit_when_done = True
        supervisor.submit(command)

    install_signal_handlers(on_signal)
    app.run()
    if app.engine_started and not app.engine_done.is_set():
        # Closed early (by an error of ours, say): stop the runs before the store and the lock
        # are let go. Normally the event loop has already waited for the engine's thread.
        supervisor.submit(control.Quit(now=True, by=app.by))
        app.engine_done.wait(JOIN_SECONDS)
    finished = app.view.finished
    if finished is not None:  # the screen is gone: one line that stays in the terminal
        print(f"autoresearch-tui: {finished.reason}; frontier {finished.frontier[:8]} on "
              f"{finished.detail.get('branch', '?')}\nthe log: autoresearch-tui report --db {store.path}",
              file=sys.stderr)
    return app.engine_code if app.engine_code is not None else 1

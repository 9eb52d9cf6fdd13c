"""The terminal UI: renders the engine's events and sends its control commands, nothing else.

The engine runs in this process, on a thread worker. Its sink (called on the engine's thread)
only appends to a queue. Ten times a second the app folds what arrived into the view model
(every progress line is kept) and redraws what changed: new numbers once a second for all
lanes in one frame, anything else at once. A decision, a lane change or a result wakes the app
at once instead of waiting for the tick."""

from __future__ import annotations

import asyncio
import gc
import getpass
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer

from results.records import Experiment, FrontierMove
from scheduler.engine import control, events

from . import actions
from .best_chart import BestChart
from .confirm import ConfirmScreen
from .detail import DetailScreen
from .experiments import ExperimentsPanel
from .header import ResearchHeader
from .help import HelpScreen
from .lane_grid import LaneGrid
from .lane_pane import LanePane
from .link import EngineLink
from .messages import ExperimentChosen, LaneSelected
from .overrides import Overrides
from .state import ResearchView
from .tree_view import TreeScreen

log = logging.getLogger("autoresearch.tui")

TICK_SECONDS = 0.1
# New progress numbers and telemetry are drawn once a second, as top and nvitop do; anything
# else (a run starting, a decision, a key's answer) at once. Eight lanes of 20 lines/s drawn
# at the events' 10 Hz cost a 160x48 terminal's app ~40% of a core; at 2 Hz ~6%; at 1 Hz in
# one frame 3-4% (bench/bench_tui.py).
LANE_SECONDS = 1.0
# A loss curve costs ~4 ms to plot: a frame plots at most this many (with 8 lanes each curve
# is replotted every 4 s), so that a key pressed during a frame is still answered within the
# 50 ms target. Plotting them in frames of their own instead cost ~2% of a core more
# (bench/bench_tui.py).
CURVES_PER_FRAME = 2
RELOAD_SECONDS = 1.0  # the table re-reads the store at most this often (queued and rejected rows)
HIGH_RATE = (events.RunProgress, events.GpuSampled)
# Keys that only make sense on the main screen; the detail screen keeps the ones that act on
# its experiment or on a lane, and a dialog keeps none.
MAIN_ONLY = {"filter", "sort", "details", "tree"}


@dataclass(frozen=True)
class EngineStopped:
    """Put in the queue by the engine's worker when `run()` has returned."""

    code: int


def _second_of(t: float) -> float:
    return math.floor(t / LANE_SECONDS) if math.isfinite(t) else -math.inf


def _freeze_startup_objects() -> None:
    """Everything built to start the app lives as long as it does: move it out of the garbage
    collector's sight, whose full collections otherwise walk it all and stall the screen for
    30-80 ms at a time (bench/bench_tui.py). As the trainer does after its first step."""
    gc.collect()
    gc.freeze()


def current_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in a container: still say something
        return os.environ.get("USER") or "someone"


class ResearchApp(Overrides, App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "autoresearch-tui"
    BINDINGS = actions.bindings()

    def __init__(self, link: EngineLink, *, clock=time.monotonic, user: str | None = None,
                 reload_seconds: float = RELOAD_SECONDS, freeze_after_start: bool = False) -> None:
        super().__init__()
        self.freeze_after_start = freeze_after_start  # for the one app a process runs (run_tui)
        self.link = link
        self.view = ResearchView(link.tag, link.lanes, review=link.review, metric=link.metric,
                                 max_cost=link.max_cost, sandbox=link.sandbox, agents_url=link.agents_url)
        self.clock = clock
        self.started = clock()
        self.by = f"{user or current_user()} via tui"
        self.inbox: deque = deque()  # append and popleft are atomic: the engine's thread appends
        self.selected_lane = 0
        self.engine_code: int | None = None
        self.engine_started = False
        self.engine_done = threading.Event()
        self.quit_when_done = False  # a person asked to quit: close as soon as the engine stops
        self.commands_sent: list[control.Command] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_pending = False
        self._reload_due = True
        self._reload_seconds = reload_seconds
        self._last_reload = float("-inf")
        self.panes: dict[int, LanePane] = {}
        self._drawn_at = {info.lane: float("-inf") for info in link.lanes}

    # -- the engine's side ----------------------------------------------------------------------

    def sink(self, event) -> None:
        """Called on the engine's thread for every event: queue it, and for anything but the
        high-rate events wake the app now rather than at the next tick."""
        self.inbox.append(event)
        if not isinstance(event, HIGH_RATE) and not self._wake_pending and self._loop is not None:
            self._wake_pending = True
            try:
                self._loop.call_soon_threadsafe(self.drain)
            except RuntimeError:  # the loop has closed: the app is gone
                pass

    @work(thread=True, exit_on_error=False, name="engine", group="engine")
    def _run_engine(self) -> int:
        code = 1
        self.engine_started = True
        try:
            code = self.link.run()
        except Exception as e:  # noqa: BLE001 - ours: to the log, and a line on screen
            log.exception("the supervisor failed")
            self.sink(events.Notice("error", f"the supervisor failed: {e!r} (see the log)"))
        finally:
            self.engine_code = code
            self.engine_done.set()
            self.sink(EngineStopped(code))
        return code

    @property
    def engine_running(self) -> bool:
        return self.link.run is not None and not self.engine_done.is_set()

    # -- building the screen ---------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield ResearchHeader(id="header")
        with Vertical(id="main"):
            panes = [LanePane(self.view.lanes[info.lane], self.view.metric, self.clock) for info in self.link.lanes]
            self.panes = {pane.view.lane: pane for pane in panes}
            yield LaneGrid(*panes, id="lanes")
            with Horizontal(id="bottom"):
                yield ExperimentsPanel(self.view, id="experiments")
                yield BestChart(self.view, id="best")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.set_interval(TICK_SECONDS, self.drain)
        self.set_interval(1.0, self._second)
        self.query_one("#table").focus()
        self.select_lane(0)
        self._second()
        if self.freeze_after_start:
            self.call_after_refresh(_freeze_startup_objects)
        self.drain()  # events queued before the screen existed (a resumed night, a test's)
        if self.link.run is not None:
            self._run_engine()

    def on_resize(self) -> None:
        self.set_class(self.size.width < 110, "-narrow")

    def on_unmount(self) -> None:
        if self.freeze_after_start:
            gc.unfreeze()  # let the interpreter's exit free them (DuckDB complains otherwise)
        # Whatever closes the app, no training child outlives it: stop the runs now; the
        # engine's worker is joined when the event loop shuts down.
        if self.engine_running:
            log.info("the app closed while the engine ran: stopping the runs")
            self.link.submit(control.Quit(now=True, by=self.by))

    # -- folding events into the screen ------------------------------------------------------------

    def drain(self) -> None:
        """Fold every queued event into the view and redraw what changed (ten times a second,
        and at once for anything but progress and telemetry)."""
        self._wake_pending = False
        if not self.is_running:  # a wake-up that arrived while the app closed
            return
        stopped = None
        while True:
            try:
                event = self.inbox.popleft()
            except IndexError:
                break
            if isinstance(event, EngineStopped):
                stopped = event
                continue
            self.view.apply(event)
            if isinstance(event, events.Notice):
                self._toast(event)
            elif isinstance(event, events.Decided) and event.source == "user":
                # What became of a person's override, in the engine's words (a keep that
                # conflicts with the frontier ends as a discard, say).
                self.notify(f"#{event.experiment_id} {event.decision}: {event.reason}", timeout=8)
            elif isinstance(event, events.Finished):
                self.notify(f"the research finished: {event.reason}. q closes the app.", timeout=30)
            if not isinstance(event, HIGH_RATE):
                self._reload_due = True
        self.render_changes()
        if stopped is not None and self.quit_when_done:
            self.exit(stopped.code)

    def render_changes(self) -> None:
        changes = self.view.take_changes()
        if not changes:
            return
        now = self.clock()
        curves = CURVES_PER_FRAME
        for lane in sorted(changes.lanes):
            pane = self.panes.get(lane)
            if pane is None:
                continue
            # New numbers are drawn once a second, every lane in the same frame (spreading the
            # lanes over the ticks cost half as much again in frames); anything else at once.
            view = self.view.lanes[lane]
            if lane in changes.urgent or _second_of(now) > _second_of(self._drawn_at[lane]):
                self._drawn_at[lane] = now
                pane.show(view)
                curve = pane.show_curve(view, allowed=curves > 0)
                if curve == "plotted":
                    curves -= 1
                elif curve == "due":
                    self.view.changes.lanes.add(lane)  # its plot waits for the next frame
            else:
                self.view.changes.lanes.add(lane)  # new numbers wait for the next second
        if changes.header:
            self.query_one(ResearchHeader).show(self.view, self.clock() - self.started)
        if changes.table:
            self.query_one(ExperimentsPanel).show()
            self.query_one(BestChart).show()
            for screen in self.screen_stack:
                if isinstance(screen, (DetailScreen, TreeScreen)):
                    screen.show()
        elif changes.lanes and isinstance(self.screen, DetailScreen):
            self.screen.show()  # its live progress

    def _toast(self, notice: events.Notice) -> None:
        severity = {"warning": "warning", "error": "error"}.get(notice.level, "information")
        self.notify(notice.message, severity=severity, timeout=4 if severity == "information" else 10)

    def _second(self) -> None:
        headers = self.query(ResearchHeader)
        if not headers:  # the app is closing and its screen is gone; the timer can still fire once
            return
        headers.first().show(self.view, self.clock() - self.started)  # repaints if it moved
        if self._reload_due and self.link.store is not None and self.clock() - self._last_reload >= self._reload_seconds:
            self._reload_due = False
            self._last_reload = self.clock()
            self._reload()

    @work(thread=True, exclusive=True, group="reload", exit_on_error=False)
    def _reload(self) -> None:
        """Queued, rejected and earlier sessions' experiments have no event of their own: the
        table reads them from the store (thread-safe), off the event loop."""
        try:
            rows = self.link.store.experiments(tag=self.link.tag)
            moves = self.link.store.frontier_moves(tag=self.link.tag)
        except Exception:  # noqa: BLE001 - a closed store at exit, or a busy one: next time
            log.debug("reloading the experiments failed", exc_info=True)
            return
        try:
            self.call_from_thread(self._merge, rows, moves)
        except RuntimeError:  # the app has closed meanwhile
            pass

    def _merge(self, rows: list[Experiment], moves: list[FrontierMove]) -> None:
        self.view.merge_stored(rows, moves)
        self.render_changes()

    # -- selection ---------------------------------------------------------------------------------

    def select_lane(self, lane: int) -> None:
        if lane not in self.panes:
            return
        self.selected_lane = lane
        for n, pane in self.panes.items():
            pane.set_class(n == lane, "-selected")

    @on(LaneSelected)
    def _lane_clicked(self, message: LaneSelected) -> None:
        self.select_lane(message.lane)

    @on(ExperimentChosen)
    def _row_chosen(self, message: ExperimentChosen) -> None:
        self.open_details(message.experiment_id)

    def selected_experiment(self) -> Experiment | None:
        if isinstance(self.screen, DetailScreen):
            return self.view.experiments.get(self.screen.experiment_id)
        if isinstance(self.screen, TreeScreen):
            experiment_id = self.screen.selected_id
            return self.view.experiments.get(experiment_id) if experiment_id is not None else None
        experiment_id = self.query_one(ExperimentsPanel).selected_id
        return self.view.experiments.get(experiment_id) if experiment_id is not None else None

    def open_details(self, experiment_id: int) -> None:
        if experiment_id in self.view.experiments:
            self.push_screen(DetailScreen(experiment_id, self.view, self.link.repo))

    # -- actions (every one is in actions.ACTIONS) ----------------------------------------------------

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if isinstance(self.screen, (ConfirmScreen, HelpScreen)) and action != "command_palette":
            return False
        if isinstance(self.screen, (DetailScreen, TreeScreen)) and action in MAIN_ONLY:
            return False
        if action in ("approve", "reject") and not self.view.review:
            return False  # nothing is ever held for review: not in the footer, not in the palette
        return True

    def action_details(self) -> None:
        exp = self.selected_experiment()
        if exp is None:
            lane = self.view.lanes.get(self.selected_lane)
            exp = lane and (lane.running or lane.last)
        if exp is not None:
            self.open_details(exp.id)

    def action_select_lane(self, lane: int) -> None:
        self.select_lane(lane)

    def action_filter(self) -> None:
        self.query_one(ExperimentsPanel).start_filter()

    def action_sort(self) -> None:
        self.query_one(ExperimentsPanel).next_sort()

    def action_tree(self) -> None:
        self.push_screen(TreeScreen(self.view))

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    # -- the command palette ------------------------------------------------------------------------

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        for action in actions.palette():
            if self.check_action(action.name, ()):
                yield SystemCommand(f"{action.label} ({action.display})", action.help,
                                    partial(self.run_action, action.name))
        for command in super().get_system_commands(screen):
            if command.title not in ("Quit", "Keys"):
                yield command

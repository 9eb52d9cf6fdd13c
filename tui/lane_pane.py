"""One lane: its device, what its agent does, the running experiment's progress and live loss
curve, the GPU's last minute, and the lane's last result. Click it to select it."""

from __future__ import annotations

import time

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static
from textual_plotext import PlotextPlot

from results.metric import Metric

from . import lane_text
from .messages import LaneSelected
from .state import Curve, LaneView

FULL_HEIGHT = 11  # from this outer height on, the loss curve has room
DENSE_HEIGHT = 6  # below it, three borderless lines
MIN_CURVE_HEIGHT = 3
MAX_LINES = 10
CURVE_SECONDS = 3.0  # a plot costs ~4 ms to build (a quarter of the app's CPU at 2 s): every 3 s at most


class LossCurve(PlotextPlot):
    def draw(self, curve: Curve) -> None:
        plt = self.plt
        plt.clear_data()
        if len(curve):
            # Braille has two dots a cell: more points than that draw nothing new, and cost.
            steps, losses = curve.points(most=2 * self.size.width if self.size.width else None)
            plt.plot(steps, losses, marker="braille", color="cyan")
            # The first steps' loss (11 and falling fast) would flatten the rest of the curve.
            settled = losses[len(losses) // 10:] if len(losses) >= 20 else losses
            plt.ylim(min(losses), max(settled))
        plt.frame(False)
        plt.xfrequency(0)
        plt.yfrequency(2)
        self.refresh()


class LanePane(Vertical):
    def __init__(self, view: LaneView, metric: Metric = Metric(), clock=time.monotonic) -> None:
        super().__init__(id=f"lane-{view.lane}", classes="lane")
        self.view = view
        self.metric = metric
        self.clock = clock
        self.border_title = lane_text.title(view)
        self._shown = None
        self._subtitle = None
        self._curve_drawn: tuple | None = None  # (experiment, points) last drawn
        self._curve_at = float("-inf")
        # One widget a line: a redraw repaints only the lines that changed (the progress bar
        # and the numbers), not the whole pane (bench/bench_tui.py).
        self.rows = [Static(classes="lane-line") for _ in range(MAX_LINES)]
        self.curve = LossCurve(id="lane-curve")

    def compose(self) -> ComposeResult:
        yield from self.rows
        yield self.curve

    def on_mount(self) -> None:
        self.show(self.view)
        self.show_curve(self.view)

    def on_resize(self) -> None:
        height = self.outer_size.height
        self.set_class(height < DENSE_HEIGHT, "-dense")
        self.set_class(height >= FULL_HEIGHT, "-full")
        self._shown = None
        self._curve_drawn, self._curve_at = None, float("-inf")  # a new size is plotted at once
        self.show(self.view)
        self.show_curve(self.view)

    def on_click(self) -> None:
        self.post_message(LaneSelected(self.view.lane))

    def show(self, view: LaneView) -> None:
        """Redraw the lines that changed (the app calls this at most once a second for new
        numbers, at once for anything else), however many events the lane had."""
        self.view = view
        if not self.is_mounted:
            return
        full = self.has_class("-full")
        bordered = not self.has_class("-dense")
        room = self.size.height - (MIN_CURVE_HEIGHT if full and len(view.curve) >= 2 else 0)
        text_lines = lane_text.lines(view, self.size.width, max(1, min(room, MAX_LINES)), self.metric, bordered)
        shown = self._shown or []
        for i, row in enumerate(self.rows):
            line = text_lines[i] if i < len(text_lines) else None
            if line is not None and (i >= len(shown) or shown[i] != line):  # Text compares text and styles
                row.update(line, layout=False)  # a layout of the whole screen only when the count changes
            if row.display != (line is not None):
                row.display = line is not None
        self._shown = text_lines
        subtitle = lane_text.activity(view) if bordered else None
        if subtitle != self._subtitle:
            self._subtitle = subtitle
            self.border_subtitle = subtitle

    def show_curve(self, view: LaneView, allowed: bool = True) -> str | None:
        """Replot the loss curve when it has new points, at most every CURVE_SECONDS (or at
        once when the run has ended). With allowed=False a due plot waits: the app plots one a
        tick. Returns "plotted", "due" (it waited) or None."""
        self.view = view
        if not self.is_mounted:
            return None
        curve = self.curve
        show = self.has_class("-full") and len(view.curve) >= 2
        if curve.display != show:
            curve.display = show
        if not show:
            return None
        height = max(MIN_CURVE_HEIGHT, self.size.height - len(self._shown or ()))
        if curve.styles.height is None or curve.styles.height.value != height:
            curve.styles.height = height
        drawn = (view.curve.experiment_id, len(view.curve))
        now = self.clock()
        if drawn == self._curve_drawn or (now - self._curve_at < CURVE_SECONDS and view.running is not None):
            return None
        if not allowed:
            return "due"
        self._curve_drawn, self._curve_at = drawn, now
        curve.draw(view.curve)
        return "plotted"

"""Best so far: every measured result as a dot, and the running minimum of the kept ones as a
line, by experiment number. Redrawn only when the experiments change."""

from __future__ import annotations

from textual_plotext import PlotextPlot

from . import figures
from .state import ResearchView


class BestChart(PlotextPlot):
    def __init__(self, view: ResearchView, **kwargs) -> None:
        super().__init__(**kwargs)
        self.view = view
        self.border_title = "best so far"
        self._drawn: tuple | None = None

    def on_mount(self) -> None:
        self.show()

    def show(self) -> None:
        xs, ys, best_x, best_y = self.view.best_so_far()
        key = (tuple(xs), tuple(ys), tuple(best_y))
        if key == self._drawn:
            return
        self._drawn = key
        plt = self.plt
        plt.clear_data()
        plt.frame(False)
        plt.xfrequency(0)
        plt.yfrequency(3)
        if xs:
            plt.scatter(xs, ys, marker="dot", color="gray")
        if best_x:
            plt.plot(best_x, best_y, marker="braille", color="green")
        bounds = figures.axis_range([*ys, *best_y])
        if bounds is not None:
            plt.ylim(*bounds)
        self.refresh()

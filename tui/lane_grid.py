"""The lane panes in a grid with as few columns as give each pane room for its loss curve, else
for its text, else as many as fit side by side: 1 to 8 lanes on any terminal from 80x24."""

from __future__ import annotations

import math

from textual.containers import Grid

from .lane_pane import DENSE_HEIGHT, FULL_HEIGHT

MIN_PANE_WIDTH = 36


def columns_for(lanes: int, width: int, height: int) -> int:
    most = max(1, min(lanes, width // MIN_PANE_WIDTH))
    for wanted in (FULL_HEIGHT, DENSE_HEIGHT):
        for columns in range(1, most + 1):
            if height // math.ceil(lanes / columns) >= wanted:
                return columns
    return most


class LaneGrid(Grid):
    def on_resize(self) -> None:
        panes = len(self.children)
        if not panes:
            return
        columns = columns_for(panes, self.size.width, self.size.height)
        self.styles.grid_size_columns = columns
        self.styles.grid_size_rows = math.ceil(panes / columns)

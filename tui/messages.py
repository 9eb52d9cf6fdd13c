"""The messages widgets send the app (one place, so the conversation is easy to follow)."""

from __future__ import annotations

from textual.message import Message


class LaneSelected(Message):
    """A lane pane was clicked: p and s act on that lane now."""

    def __init__(self, lane: int) -> None:
        super().__init__()
        self.lane = lane


class ExperimentChosen(Message):
    """A row was chosen (enter, or a click on the highlighted row): open its details."""

    def __init__(self, experiment_id: int) -> None:
        super().__init__()
        self.experiment_id = experiment_id

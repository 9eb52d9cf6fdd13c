"""Every experiment in one table: sortable (click a column, or o), filterable (/), status and
decision coloured. The cursor's row is "the selected experiment" the keys act on."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Input
from textual.widgets.data_table import RowDoesNotExist

from results.records import Experiment, Status

from . import figures
from .messages import ExperimentChosen
from .state import FAILURES, SORT_KEYS, ResearchView

COLUMNS = (("#", "id"), ("lane", "lane"), ("status", "status"), ("{metric}", "value"), ("Δ base", "delta"),
           ("decision", "decision"), ("description", "description"))
SORT_ORDER = ("id", "value", "delta", "status", "decision", "lane", "description")
STATUS_STYLES = {Status.OK: "green", Status.RUNNING: "bold cyan", Status.QUEUED: "dim",
                 Status.KILLED: "yellow", Status.INTERRUPTED: "yellow", Status.REJECTED: "magenta",
                 Status.NOT_RUN: "italic dim"}


class ExperimentsPanel(Vertical):
    def __init__(self, view: ResearchView, **kwargs) -> None:
        super().__init__(**kwargs)
        self.view = view
        self.query_text = ""
        self.sort_key = "id"
        self.reverse = False
        self._shown: tuple | None = None
        self.border_title = "experiments"

    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter: words every row must contain (enter keeps it, escape clears)",
                    id="filter")
        table = DataTable(id="table", cursor_type="row", zebra_stripes=True)
        for label, key in COLUMNS:
            table.add_column(label.format(metric=self.view.metric.name), key=key)
        yield table

    def on_mount(self) -> None:
        self.query_one("#filter", Input).display = False
        self.show()

    @property
    def table(self) -> DataTable:
        return self.query_one("#table", DataTable)

    @property
    def selected_id(self) -> int | None:
        table = self.table
        if not table.row_count:
            return None
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        except Exception:  # noqa: BLE001 - an empty or changing table has no cursor row
            return None
        return int(key.value) if key.value is not None else None

    def select(self, experiment_id: int) -> None:
        try:
            self.table.move_cursor(row=self.table.get_row_index(str(experiment_id)))
        except RowDoesNotExist:
            pass

    # -- rows --------------------------------------------------------------------------------

    def show(self, force: bool = False) -> None:
        """Rebuild the rows when the experiments, the filter or the order changed; the cursor
        stays on the same experiment."""
        key = (self.view.table_version, self.query_text, self.sort_key, self.reverse)
        if key == self._shown and not force:
            return
        self._shown = key
        table = self.table
        selected = self.selected_id
        rows = self.view.table(self.query_text, self.sort_key, self.reverse)
        table.clear()
        for exp in rows:
            table.add_row(*self._cells(exp), key=str(exp.id))
        # The selection never moves under a person's finger: k or d must act on the row they
        # looked at, however many rows arrived meanwhile. With none yet, start at the newest.
        if selected is not None:
            self.select(selected)
        elif rows and self.sort_key == "id" and not self.reverse:
            table.move_cursor(row=len(rows) - 1)
        arrow = "↓" if self.reverse else "↑"
        shown = f"{len(rows)} of {len(self.view.experiments)}" if self.query_text else f"{len(rows)}"
        sort = dict((k, label) for label, k in COLUMNS)[self.sort_key].format(metric=self.view.metric.name)
        self.border_subtitle = f"{shown} · sorted by {sort} {arrow}" + (
            f" · filter: {self.query_text}" if self.query_text else "")

    def _cells(self, exp: Experiment) -> list:
        view = self.view
        status = view.status_text(exp)
        style = "bold red" if exp.status in FAILURES else STATUS_STYLES.get(exp.status, "")
        if status == "review":
            style = "bold yellow"
        change = view.delta(exp)
        decision = Text()
        if exp.decision is not None:
            decision.append(exp.decision.value, style="bold green" if exp.decision.value == "keep" else "red")
            if exp.decision_source is not None and exp.decision_source.value == "user":
                decision.append(" ·user", style="bold yellow")
        return [
            Text(str(exp.id), style="dim", justify="right"),
            Text(str(exp.lane) if exp.lane >= 0 else "", justify="right"),
            Text(status, style=style),
            Text(figures.bpb(view.value(exp)), justify="right", style="bold" if exp.decision and
                 exp.decision.value == "keep" else ""),
            Text(figures.delta(change), justify="right",
                 style="" if change is None else "green" if view.metric.improvement(change) > 0 else "red"),
            decision,
            Text(exp.description, no_wrap=True, overflow="ellipsis"),
        ]

    # -- sorting and filtering ----------------------------------------------------------------

    def sort_by(self, key: str) -> None:
        if key not in SORT_KEYS:
            return
        if key == self.sort_key:
            self.reverse = not self.reverse
        else:
            self.sort_key, self.reverse = key, False
        self.show()

    def next_sort(self) -> None:
        """o: the next column, ascending; pressing it on the last one starts over."""
        self.sort_key = SORT_ORDER[(SORT_ORDER.index(self.sort_key) + 1) % len(SORT_ORDER)]
        self.reverse = False
        self.show()

    def start_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    @on(DataTable.HeaderSelected)
    def _header(self, event: DataTable.HeaderSelected) -> None:
        self.sort_by(str(event.column_key.value))

    @on(DataTable.RowSelected)
    def _chosen(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self.post_message(ExperimentChosen(int(event.row_key.value)))

    @on(Input.Changed, "#filter")
    def _filter(self, event: Input.Changed) -> None:
        self.query_text = event.value.strip()
        self.show()

    @on(Input.Submitted, "#filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        box = self.query_one("#filter", Input)
        box.display = bool(self.query_text)
        self.table.focus()

    def key_escape(self) -> None:
        box = self.query_one("#filter", Input)
        if box.has_focus or self.query_text:
            box.value = ""
            self.query_text = ""
            box.display = False
            self.table.focus()
            self.show()

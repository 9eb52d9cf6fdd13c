"""? : every key, from the same registry as the bindings, the footer and the palette."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from .actions import help_rows

MOUSE = ("Mouse: click a lane to select it, a row to select it (again to open it), a column title to "
         "sort by it, a key in the footer to press it.")


def help_table() -> Table:
    table = Table(box=None, show_header=False, padding=(0, 2, 0, 0), expand=True)
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    group = None
    for title, key, text in help_rows():
        if title != group:
            if group is not None:
                table.add_row("", "")
            table.add_row("", f"[bold]{title}[/]")
            group = title
        table.add_row(key, text)
    return table


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "close", "close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Static(help_table())
            yield Static(f"\n{MOUSE}\nEvery override is recorded in the log with who gave it and when.",
                         id="help-mouse")

    def action_close(self) -> None:
        self.dismiss(None)

"""One experiment in full: its diff against its parent, its log (followed while it runs), the
agent's transcript, and every number it reported. k, d and r act on it here too."""

from __future__ import annotations

import subprocess
from pathlib import Path

from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Log, Static, TabbedContent, TabPane

from results.records import Experiment, Status

from . import figures, transcript
from .log_follow import LogFollower
from .state import ResearchView

TABS = ("diff", "log", "transcript", "summary")
LOG_POLL_SECONDS = 0.5


def read_diff(repo: Path | None, exp: Experiment) -> str:
    """`git diff parent commit` in the research repository, or a sentence saying why not."""
    if exp.commit is None:
        return "# no commit: the proposal never became one"
    if exp.parent_commit in (None, exp.commit):
        return "# no change: a baseline runs the frontier as it is"
    if repo is None:
        return "# no repository to read the diff from"
    try:
        result = subprocess.run(["git", "diff", exp.parent_commit, exp.commit], cwd=repo, capture_output=True,
                                text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"# git diff failed: {e}"
    if result.returncode != 0:
        return f"# git diff failed: {result.stderr.strip()}"
    return result.stdout or "# no change"


class DetailScreen(Screen[None]):
    BINDINGS = [Binding("escape,backspace", "close", "back"),
                *(Binding(str(i + 1), f"tab('{name}')", name, show=False) for i, name in enumerate(TABS))]

    def __init__(self, experiment_id: int, view: ResearchView, repo: Path | None) -> None:
        super().__init__(classes="detail")
        self.experiment_id = experiment_id
        self.view = view
        self.repo = repo
        self.diff_text: str | None = None
        self._log: LogFollower | None = None
        self._shown: tuple | None = None

    @property
    def experiment(self) -> Experiment | None:
        return self.view.experiments.get(self.experiment_id)

    def compose(self) -> ComposeResult:
        yield Static(id="detail-title")
        with TabbedContent(id="detail-tabs"):
            with TabPane("1 diff", id="diff"):
                with VerticalScroll():
                    yield Static("loading the diff…", id="diff-body")
            with TabPane("2 log", id="log"):
                yield Log(id="log-body", max_lines=20_000, auto_scroll=True)
            with TabPane("3 transcript", id="transcript"):
                with VerticalScroll():
                    yield Static(id="transcript-body")
            with TabPane("4 summary", id="summary"):
                with VerticalScroll():
                    yield Static(id="summary-body")
        yield Footer()

    def on_mount(self) -> None:
        exp = self.experiment
        self.query_one("#transcript-body", Static).update(transcript.render(exp.notes if exp else {}))
        self._log = LogFollower(exp.log_path if exp else None)
        self._follow()
        self.set_interval(LOG_POLL_SECONDS, self._follow)
        self.show()
        self._load_diff(exp)

    @work(thread=True, exclusive=True, group="diff")
    def _load_diff(self, exp: Experiment | None) -> None:
        text = read_diff(self.repo, exp) if exp is not None else "# unknown experiment"
        self.app.call_from_thread(self._diff_loaded, text)

    def _diff_loaded(self, text: str) -> None:
        self.diff_text = text
        body = self.query_one("#diff-body", Static)
        body.update(Syntax(text, "diff", theme="ansi_dark", word_wrap=False, background_color="default"))

    def _follow(self) -> None:
        exp = self.experiment
        if self._log is None or exp is None:
            return
        if self._log.path is None and exp.log_path:  # it started since the screen opened
            self._log = LogFollower(exp.log_path)
        lines = self._log.read(final=exp.status.finished)
        log = self.query_one("#log-body", Log)
        if self._log.skipped and not log.line_count:
            log.write_line(f"… ({self._log.skipped:,} earlier bytes not shown; the whole log is {self._log.path})")
        if lines:
            log.write_lines(lines)
        elif not log.line_count and self._log.path is None:
            log.write_line("no log yet: the experiment has not started")

    def show(self) -> None:
        """Refresh the title and the summary (the app calls this when experiments change)."""
        exp = self.experiment
        if exp is None:
            return
        lane = self.view.lanes.get(exp.lane)
        live = lane.progress if lane is not None and lane.running is not None and lane.running.id == exp.id else None
        key = (exp, live)
        if key == self._shown:
            return
        self._shown = key
        self.query_one("#detail-title", Static).update(_title(self.view, exp))
        self.query_one("#summary-body", Static).update(summary_table(self.view, exp, live))

    def action_close(self) -> None:
        self.dismiss(None)

    def action_tab(self, name: str) -> None:
        self.query_one(TabbedContent).active = name


def _title(view: ResearchView, exp: Experiment) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(f" #{exp.id} ", style="bold reverse")
    text.append(f" {exp.kind} · lane {exp.lane} · ")
    text.append(view.status_text(exp), style="bold red" if exp.status not in (Status.OK, Status.RUNNING,
                                                                               Status.QUEUED, Status.NOT_RUN) else "bold")
    value = view.value(exp)
    if value is not None:
        text.append(f" · {view.metric.name} {figures.bpb(value)} ({figures.delta(view.delta(exp))} vs baseline)")
    if exp.decision is not None:
        text.append(f" · {exp.decision.value}", style="bold green" if exp.decision.value == "keep" else "bold red")
        if exp.decision_source is not None:
            text.append(f" ({exp.decision_source.value})")
    text.append(f"\n {exp.description}", style="italic")
    return text


def summary_table(view: ResearchView, exp: Experiment, live=None) -> Table:
    table = Table(box=None, show_header=False, padding=(0, 2, 0, 0))
    table.add_column(style="dim", no_wrap=True)
    table.add_column(overflow="fold")

    def row(label, value):
        if value not in (None, "", {}):
            table.add_row(label, value if isinstance(value, Text) else str(value))

    row("description", exp.description)
    row("hypothesis", exp.hypothesis)
    row("agent", exp.agent)
    row("status", view.status_text(exp) + (f": {exp.error}" if exp.error else ""))
    if exp.decision is not None:
        row("decision", f"{exp.decision.value} ({exp.decision_source.value if exp.decision_source else '?'}): "
                        f"{exp.decision_reason or ''}")
    row(view.metric.name, figures.bpb(view.value(exp)) if view.value(exp) is not None else None)
    row("Δ baseline", figures.delta(view.delta(exp)) if view.delta(exp) is not None else None)
    if live is not None:
        row("progress", f"step {live.step} · {figures.percent(live.pct, 1)} · loss {live.loss} · "
                        f"{figures.count(live.tok_per_sec)} tok/s · mfu {figures.percent(live.mfu, 1)}")
    for key, value in exp.summary.items():
        if key != view.metric.name:
            row(key, value)
    for key, value in exp.extra.items():  # what the trainer printed beyond the known keys
        if not isinstance(value, (dict, list)):
            row(key, value)
    for label, other in (("confirms", exp.confirms), ("rerun of", exp.rerun_of), ("verifies", exp.verifies),
                         ("reference for", exp.reference_for)):
        row(label, f"#{other}" if other is not None else None)
    row("direction", exp.notes.get("direction"))
    gpu = exp.gpu_name if exp.gpu_index is None else f"{exp.gpu_index} · {exp.gpu_name}"
    row("device", gpu)
    row("commit", exp.commit)
    row("parent", exp.parent_commit)
    row("branch", exp.branch)
    row("started", exp.started_at.isoformat(sep=" ", timespec="seconds") + " UTC" if exp.started_at else None)
    if exp.started_at and exp.finished_at:
        row("finished", f"{exp.finished_at.isoformat(sep=' ', timespec='seconds')} UTC "
                        f"({figures.duration((exp.finished_at - exp.started_at).total_seconds())})")
    row("exit code", exp.exit_code)
    row("log", exp.log_path)
    row("transcript", exp.notes.get("transcript"))
    return table

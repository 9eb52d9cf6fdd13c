"""The two lines at the top: the research line, how long it has run, the best result against
the baseline, the tally of experiments, the noise decisions are judged against, and what the
LLMs cost so far."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from scheduler.engine import events

from . import figures
from .state import ResearchView


class ResearchHeader(Static):
    DEFAULT_CSS = """
    ResearchHeader { height: 2; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    _shown = ""
    _last: tuple[ResearchView, float] | None = None

    def show(self, view: ResearchView, elapsed: float) -> None:
        self._last = (view, elapsed)
        text = header_text(view, elapsed, self.size.width or 80)
        if text.plain != self._shown:  # once a second for the clock; a repaint only when it moved
            self._shown = text.plain
            self.update(text, layout=False)  # always two lines

    def on_resize(self) -> None:
        # What fits (the best-so-far sparkline) depends on the width: the first show() can come
        # before the first layout, so draw again at the real width rather than at the next tick.
        if self._last is not None:
            self.show(*self._last)


def header_text(view: ResearchView, elapsed: float, width: int) -> Text:
    top = Text(no_wrap=True, overflow="ellipsis")
    top.append(f" {view.tag} ", style="bold reverse")
    top.append(f" {figures.duration(elapsed)} ", style="dim")
    state = _state(view)
    if state is not None:  # before the figures, so no width hides it
        label, style = state
        top.append(f" {label} ", style=style)
        top.append(" ")
    if view.claim is not None:  # the night's verdict, before the figures that led to it
        top.append(f" {view.claim.short()} ", style="bold black on green" if view.claim.holds else "bold black on yellow")
        top.append(" ")
    best = view.best()
    metric = view.metric.name
    if best is not None:
        top.append(f" best {metric} ", style="dim")
        top.append(figures.bpb(view.value(best)), style="bold green")
        change = view.delta(best)
        if change is not None:
            top.append(f" {figures.delta(change)}", style="green" if view.metric.improvement(change) > 0 else "red")
            top.append(" vs baseline", style="dim")
        top.append(f" (#{best.id})", style="dim")
    else:
        base = next((b for b in (view.baseline(lane.info.gpu_name) for lane in view.lanes.values())
                     if b is not None), None)
        top.append(f" baseline {metric} ", style="dim")
        top.append(figures.bpb(base), style="bold")
    if view.sandbox is not None:  # whether LLM-written code runs confined: said, never assumed
        if view.sandbox.active:
            top.append("   sandboxed", style="dim")
        else:
            top.append("   not sandboxed", style="bold yellow")
    if view.agents_url:  # where external agents connect (the token is in .autoresearch/mcp.json)
        top.append("   MCP ", style="dim")
        top.append(view.agents_url.removeprefix("http://").removesuffix("/mcp"), style="bold")

    c = view.counts()
    bottom = Text(no_wrap=True, overflow="ellipsis")
    bottom.append(" ")
    for number, word, style in ((c.done, "done", "bold"), (c.kept, "kept", "bold green"),
                                (c.discarded, "discarded", "bold"), (c.crashed, "crashed", "bold red")):
        bottom.append(str(number), style=style if number else "dim")
        bottom.append(f" {word} · " if word != "crashed" else f" {word}", style="dim")
    bottom.append("   LLM ", style="dim")
    if view.llm_calls:
        bottom.append(f"{figures.count(view.llm_tokens)} tok ", style="bold")
        bottom.append(figures.money(view.llm_cost, view.llm_unpriced), style="bold")
    else:
        bottom.append(f"{figures.MISSING} tok {figures.MISSING}", style="dim")
    if view.max_cost is not None:  # spend against the limit; red once most of it is gone
        near = (view.llm_cost or 0.0) >= 0.9 * view.max_cost
        bottom.append(" of ", style="dim")
        bottom.append(f"${view.max_cost:.2f}", style="bold red" if near else "dim")
    _noise(bottom, view.noise)  # after the cost: at 80 columns its margin is what gets cut
    xs, ys, best_x, best_y = view.best_so_far()
    room = width - bottom.cell_len - 8
    if best_y and room >= 8:
        bottom.append("  best ", style="dim")
        bottom.append(figures.sparkline([-view.metric.score(v) for v in best_y], min(room, 24)), style="green")  # up is better
    return Text("\n").join([top, bottom])


def _noise(line: Text, noise: events.NoiseEstimated | None) -> None:
    """The noise every decision is measured against: sigma, its degrees of freedom, and the
    improvement a single run needs now (the estimate's upper bound while it has few dof)."""
    line.append("   σ ", style="dim")
    if noise is None or noise.sigma is None:
        line.append(figures.MISSING, style="dim")
        return
    line.append(f"{noise.sigma:.4f}", style="bold")
    line.append(f" ({noise.dof} dof)", style="dim")
    line.append(" margin ", style="dim")
    line.append(f"{noise.margin:.4f}", style="bold")


def _state(view: ResearchView) -> tuple[str, str] | None:
    if view.finished is not None:
        return f"finished: {view.finished.reason}", "bold black on yellow"
    if view.quitting == "now":
        return "stopping the runs", "bold white on red"
    if view.quitting:
        return "quitting: runs finish first", "bold black on yellow"
    return None

"""What a lane pane says, laid out for the room it has: from one wide pane with room for
everything to eight panes of three lines on an 80x24 terminal. Rich text only (no textual), so
the layout rules are tested directly."""

from __future__ import annotations

from rich.text import Text

from results.metric import Metric

from . import figures
from .state import LaneView

ICONS = {"training": "▶", "evaluating": "◎", "proposing": "✎", "awaiting review": "?", "paused": "⏸",
         "idle": "·", "lost": "✖", "baseline": "▶"}
STYLES = {"training": "bold cyan", "evaluating": "bold magenta", "proposing": "yellow",
          "awaiting review": "bold yellow", "paused": "yellow", "lost": "bold red"}
DECISION_STYLES = {"keep": "bold green", "discard": "red"}


def title(lane: LaneView) -> str:
    info = lane.info
    device = "CPU" if info.gpu_index is None else f"GPU {info.gpu_index} · {info.gpu_name}"
    return f"[{lane.lane + 1}] lane {lane.lane} · {device}"


def activity(lane: LaneView) -> Text:
    word = lane.activity
    text = Text(f"{ICONS.get(word, '■')} {word}", style=STYLES.get(word, "dim"))
    if lane.paused and word != "paused":
        text.append(" · paused after this run", style="yellow")
    if lane.pending:
        text.append(f" · {lane.pending}…", style="bold yellow")
    return text


def lines(lane: LaneView, width: int, height: int, metric: Metric = Metric(), bordered: bool = True) -> list[Text]:
    """The pane's lines, the most important kept when there is no room for all: what it runs
    and its progress, its last result, the numbers, the telemetry. A bordered pane shows what
    its agent does in the border; a dense one (three lines or fewer) in its first line."""
    if height <= 0 or width <= 0:
        return []
    if height <= 3 and not bordered:
        return _dense(lane, width, height, metric)
    candidates: list[tuple[int, Text]] = []  # (priority, line), shown in this order
    if not bordered:
        candidates.append((0, activity(lane)))
    exp = lane.running
    if exp is not None:
        head = Text(f"#{exp.id} ", style="bold")
        if exp.kind != "proposal" and not exp.description.startswith(exp.kind):
            head.append(f"{exp.kind} ", style="bold")
        head.append(exp.description, style="italic")
        candidates.append((0, head))
        candidates.append((1, _progress(lane, width)))
        candidates.append((3, _numbers(lane)))
    elif lane.next_up is not None:
        nxt = lane.next_up
        waiting = "awaiting review (a/x)" if lane.activity == "awaiting review" else "ready"
        candidates.append((1, Text(f"next #{nxt.id} {waiting}: {nxt.description}", style="italic")))
    elif lane.detail and lane.activity != "awaiting review":
        candidates.append((1, Text(lane.detail, style="dim italic")))
    for line in _telemetry(lane, width):
        candidates.append((4, line))
    candidates.append((2, _last(lane, metric)))
    keep = sorted(range(len(candidates)), key=lambda i: (candidates[i][0], i))[:height]
    out = [candidates[i][1] for i in sorted(keep)]
    for line in out:
        line.no_wrap, line.overflow = True, "ellipsis"
        line.truncate(width, overflow="ellipsis")
    return out


def _dense(lane: LaneView, width: int, height: int, metric: Metric) -> list[Text]:
    """Up to three lines, no border: the title, progress and result squeezed together."""
    first = Text(f"{lane.lane + 1} ", style="bold reverse")
    first.append(" ")
    first.append_text(activity(lane))
    exp = lane.running
    if exp is not None:
        first.append(f" #{exp.id} ", style="bold")
        pct = lane.progress.pct if lane.progress else None
        first.append(figures.bar((pct or 0) / 100, 8), style="cyan")
        first.append(f" {figures.percent(pct)}")
        if lane.progress is not None and lane.progress.loss is not None:
            first.append(f" loss {lane.progress.loss:.4f}")
    second = Text()
    sample = lane.telemetry.last
    if sample is not None:
        second.append(f"{figures.percent(sample.util_pct)} {figures.memory(sample.mem_used_mb, sample.mem_total_mb)} "
                      f"{_temp(sample.temp_c)} {_power(sample.power_w)}  ", style="dim")
    second.append_text(_last(lane, metric))
    third = Text(exp.description if exp is not None else (lane.next_up.description if lane.next_up else lane.detail),
                 style="italic dim")
    out = [first, second, third][:height]
    for line in out:
        line.no_wrap = True
        line.truncate(width, overflow="ellipsis")
    return out


def _progress(lane: LaneView, width: int) -> Text:
    p = lane.progress
    pct = p.pct if p is not None else None
    tail = f" {figures.percent(pct, 1)}"
    if p is not None and p.remaining_s is not None:
        tail += f" · {figures.short_duration(p.remaining_s)} left"
    if lane.evaluating:
        tail = " 100% · measuring"
    bar_width = max(4, width - len(tail))
    text = Text(figures.bar((pct or 0) / 100 if not lane.evaluating else 1.0, bar_width),
                style="magenta" if lane.evaluating else "cyan")
    text.append(tail)
    return text


def _numbers(lane: LaneView) -> Text:
    p = lane.progress
    text = Text()
    if p is None:
        text.append("starting…", style="dim")
        return text
    text.append("step ", style="dim")
    text.append(str(p.step))
    if p.loss is not None:
        text.append("  loss ", style="dim")
        text.append(f"{p.loss:.4f}", style="bold")
    text.append("  tok/s ", style="dim")
    text.append(figures.count(p.tok_per_sec))
    text.append("  mfu ", style="dim")
    text.append(figures.percent(p.mfu, 1))
    return text


def _last(lane: LaneView, metric: Metric) -> Text:
    exp = lane.last
    text = Text()
    if exp is None:
        text.append("no result yet", style="dim")
        return text
    text.append(f"last #{exp.id} ", style="dim")
    if exp.status.value == "ok":
        text.append(figures.bpb(metric.value(exp)), style="bold")
    else:
        text.append(exp.status.value, style="bold red")
    if exp.decision is not None:
        text.append(f" {exp.decision.value}", style=DECISION_STYLES.get(exp.decision.value, ""))
        if exp.decision_source is not None and exp.decision_source.value == "user":
            text.append(" (by a person)", style="dim")
    return text


def _temp(value: float | None) -> str:
    return f"{value:.0f}°C" if figures.known(value) else figures.MISSING


def _power(value: float | None) -> str:
    return f"{value:.0f}W" if figures.known(value) else figures.MISSING


def _telemetry(lane: LaneView, width: int) -> list[Text]:
    """Utilisation, memory, temperature and power: the latest reading and the last minute as a
    sparkline each, two to a line (four on a wide pane, one on a very narrow one)."""
    if lane.info.gpu_index is None:
        return [Text("CPU lane: no GPU telemetry", style="dim")]
    t = lane.telemetry
    if t.last is None:
        return [Text("waiting for the first GPU sample", style="dim")]
    total = t.last.mem_total_mb or lane.info.memory_total_mb
    used = t.last.mem_used_mb
    cells = [("util", figures.percent(t.last.util_pct), t.util, 0.0, 100.0),
             ("mem", f"{used / 1024:.0f}G" if figures.known(used) else figures.MISSING, t.memory, 0.0, total),
             ("temp", _temp(t.last.temp_c), t.temperature, None, None),
             ("pwr", _power(t.last.power_w), t.power, None, None)]
    per_line = 4 if width >= 100 else 2 if width >= 32 else 1
    cell_width = (width + 1) // per_line
    out = []
    for start in range(0, len(cells), per_line):
        line = Text()
        for label, value, series, low, high in cells[start:start + per_line]:
            if line:
                line.append(" ")
            line.append(f"{label:<4} ", style="dim")
            line.append(f"{value:>5} ", style="bold")
            line.append(figures.sparkline(series, max(0, cell_width - 12), low, high), style="green")
        out.append(line)
    return out

"""How numbers are written on the screen: short, fixed-width where it matters, and "—" for a
value nobody measured. Plain Python, so the formats are tested without a terminal."""

from __future__ import annotations

import math
from collections.abc import Sequence

MISSING = "—"
_BARS = "▁▂▃▄▅▆▇█"


def known(value) -> bool:
    return value is not None and not (isinstance(value, float) and not math.isfinite(value))


def bpb(value: float | None) -> str:
    return f"{value:.6f}" if known(value) else MISSING


def delta(value: float | None) -> str:
    """A change in the metric, its sign always shown (for val_bpb, negative is better)."""
    if not known(value):
        return MISSING
    return f"{value:+.4f}".replace("-", "−")


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def short_duration(seconds: float) -> str:
    """42s, 4:05, 1:02:03: what is left of a run."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    return duration(seconds) if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


def count(value: float | None) -> str:
    """12, 1.6k, 3.4M: token counts and tokens per second."""
    if not known(value):
        return MISSING
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.1f}{suffix}"
    return f"{value:.0f}"


def money(total: float | None, unknown_calls: int = 0) -> str:
    """LLM cost: "—" when no price is known, "≥$0.12" when some calls had no price."""
    if total is None:
        return MISSING
    return f"{'≥' if unknown_calls else ''}${total:.2f}"


def percent(value: float | None, digits: int = 0) -> str:
    return f"{value:.{digits}f}%" if known(value) else MISSING


def memory(used_mb: float | None, total_mb: float | None) -> str:
    if not known(used_mb):
        return MISSING
    if known(total_mb) and total_mb:
        return f"{used_mb / 1024:.1f}/{total_mb / 1024:.0f}G"
    return f"{used_mb / 1024:.1f}G"


def sparkline(values: Sequence[float | None], width: int, low: float | None = None,
              high: float | None = None) -> str:
    """The last `width` readings as block characters (older readings are averaged into one
    cell when there are more than fit); a gap where a reading was missing. Fixed `low`/`high`
    keep a percentage from looking busy when it moves by 1%."""
    if width <= 0:
        return ""
    values = list(values)
    if len(values) > width:  # squeeze: average neighbours so a minute fits any width
        cells = []
        for i in range(width):
            chunk = [v for v in values[i * len(values) // width:(i + 1) * len(values) // width] if known(v)]
            cells.append(sum(chunk) / len(chunk) if chunk else None)
        values = cells
    present = [v for v in values if known(v)]
    if not present:
        return " " * len(values)
    lo = min(present) if low is None else low
    hi = max(present) if high is None else high
    span = hi - lo
    out = []
    for v in values:
        if not known(v):
            out.append(" ")
        elif span <= 0:
            out.append(_BARS[len(_BARS) // 2] if low is None else _BARS[0])
        else:
            level = (min(max(v, lo), hi) - lo) / span
            out.append(_BARS[min(len(_BARS) - 1, int(level * len(_BARS)))])
    return "".join(out)


def bar(fraction: float | None, width: int) -> str:
    """A progress bar of eighths, so a 5-minute run visibly moves every few seconds."""
    if width <= 0:
        return ""
    if not known(fraction):
        return "░" * width
    eighths = int(max(0.0, min(1.0, fraction)) * width * 8)
    full, part = divmod(eighths, 8)
    text = "█" * full + ("▏▎▍▌▋▊▉"[part - 1] if part else "")
    return text + "░" * (width - len(text))


def axis_range(values: Sequence[float], margin: float = 0.1) -> tuple[float, float] | None:
    """A y-axis for these values: their span with `margin` of it either side. A single value (or
    a flat line) gets a band of 1% of itself, not the plotting library's default, which drew a
    flat 1.52 on an axis from 0.76 to 2.28."""
    if not values:
        return None
    lo, hi = min(values), max(values)
    pad = (hi - lo) * margin if hi > lo else max(abs(lo) * 0.01, 1e-3)
    return lo - pad, hi + pad

"""Reading a training run's output as it arrives: progress lines, FAIL, the summary.

The run contract is upstream autoresearch's: progress lines separated by `\\r` or `\\n` (upstream
starts each with `\\r` and pads the end with spaces), `FAIL` on a diverging loss, and after a
line `---` one `key: value` per line. Output arrives in arbitrary chunks, so a line may be
split across two reads; the parser keeps the unfinished part until its separator comes."""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

from results.records import SUMMARY_COLUMNS

_PROGRESS = re.compile(
    r"step\s+(?P<step>\d+)\s+\((?P<pct>[\d.]+)%\)"
    r"(?:\s*\|\s*loss:\s*(?P<loss>[-+\w.]+))?"
    r"(?:\s*\|\s*lrm:\s*(?P<lrm>[-+\w.]+))?"
    r"(?:\s*\|\s*dt:\s*(?P<dt>[\d.]+)\s*ms)?"
    r"(?:\s*\|\s*tok/sec:\s*(?P<tok>[\d,.]+))?"
    r"(?:\s*\|\s*mfu:\s*(?P<mfu>[\d.]+%|n/a))?"
    r"(?:\s*\|\s*epoch:\s*(?P<epoch>\d+))?"
    r"(?:\s*\|\s*remaining:\s*(?P<remaining>[\d.]+)\s*s)?")
_SUMMARY_LINE = re.compile(r"^(?P<key>[A-Za-z_][\w.]*):\s*(?P<value>.*?)\s*$")
# What PyTorch and the CUDA runtime print when a card runs out of memory.
_OOM = re.compile(r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED|out of memory", re.I)
_TAIL_LINES = 40


@dataclass(frozen=True)
class Progress:
    step: int
    pct: float | None = None
    loss: float | None = None
    lrm: float | None = None
    dt_ms: float | None = None
    tok_per_sec: float | None = None
    mfu: float | None = None
    epoch: int | None = None
    remaining_s: float | None = None


def _number(text: str | None, cast=float):
    if text is None:
        return None
    try:
        return cast(text.rstrip("%").replace(",", ""))
    except ValueError:
        return None  # "nan", "n/a": the value is missing, the line still counts


def parse_progress(line: str) -> Progress | None:
    m = _PROGRESS.search(line)
    if m is None:
        return None
    return Progress(step=int(m["step"]), pct=_number(m["pct"]), loss=_number(m["loss"]), lrm=_number(m["lrm"]),
                    dt_ms=_number(m["dt"]), tok_per_sec=_number(m["tok"]), mfu=_number(m["mfu"]),
                    epoch=_number(m["epoch"], int), remaining_s=_number(m["remaining"]))


class RunParser:
    """Feed it output chunks; it returns the progress lines each chunk completed and remembers
    the summary, FAIL, signs of running out of memory, and the last lines for error messages."""

    def __init__(self):
        self._partial = ""
        self.in_summary = False
        self.summary: dict[str, str] = {}
        self.failed = False  # the trainer printed FAIL
        self.oom = False
        self.tail: deque[str] = deque(maxlen=_TAIL_LINES)

    def feed(self, text: str) -> list[Progress]:
        text = self._partial + text
        parts = re.split(r"\r\n|\r|\n", text)
        self._partial = parts.pop()
        points = []
        for line in parts:
            point = self._line(line)
            if point is not None:
                points.append(point)
        return points

    def close(self) -> list[Progress]:
        """The output has ended; a last line without a separator still counts."""
        line, self._partial = self._partial, ""
        point = self._line(line) if line else None
        return [point] if point is not None else []

    def _line(self, line: str) -> Progress | None:
        stripped = line.strip()
        if not stripped:
            return None
        self.tail.append(stripped)
        if _OOM.search(stripped):
            self.oom = True
        if stripped == "---":
            self.in_summary = True
            return None
        if self.in_summary:
            m = _SUMMARY_LINE.match(stripped)
            if m:
                self.summary[m["key"]] = m["value"]
            return None
        if stripped == "FAIL":
            self.failed = True
            return None
        return parse_progress(stripped)

    def error_excerpt(self, lines: int = 3) -> str:
        """The last few lines, for the `error` column: usually the exception's last line."""
        return " | ".join(list(self.tail)[-lines:])


def typed_summary(raw: dict[str, str]) -> tuple[dict, dict]:
    """Split a printed summary into the typed columns and everything else (kept as text)."""
    summary, extra = {}, {}
    for key, value in raw.items():
        cast = SUMMARY_COLUMNS.get(key)
        if cast is None:
            extra[key] = value
        elif cast is str:
            summary[key] = value
        else:
            number = _number(value, float)
            if number is not None and cast is int:
                number = int(number)
            summary[key] = number
    return summary, extra

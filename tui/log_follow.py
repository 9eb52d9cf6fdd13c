"""Following a run's log as it grows, the way `tail -f` does: each call returns the lines
completed since the last one. The trainer ends progress lines with `\\r`, so that counts as a
line end too. Plain Python: the detail screen polls it on a timer."""

from __future__ import annotations

import re
from pathlib import Path

FIRST_READ_BYTES = 2 * 1024 * 1024  # a night-long log opens at its last 2 MB
_LINE_END = re.compile(r"\r\n|\r|\n")


class LogFollower:
    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.offset: int | None = None
        self.partial = ""
        self.skipped = 0  # bytes left out at the start of a long log

    def read(self, final: bool = False) -> list[str]:
        """New complete lines; with final=True (the run has ended) the unterminated tail too."""
        if self.path is None:
            return []
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, 2)
                if self.offset is None:
                    self.offset = max(0, size - FIRST_READ_BYTES)
                    self.skipped = self.offset
                if size < self.offset:  # truncated or replaced: start over
                    self.offset, self.partial = 0, ""
                f.seek(self.offset)
                data = f.read()
                self.offset += len(data)
        except FileNotFoundError:
            return []
        parts = _LINE_END.split(self.partial + data.decode("utf-8", errors="replace"))
        self.partial = parts.pop()
        if final and self.partial:
            parts.append(self.partial)
            self.partial = ""
        return parts

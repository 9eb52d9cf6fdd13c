"""Constraints a change must respect: a ceiling on a number the trainer reports (peak VRAM,
parameters, an artifact's bytes). A run past one is discarded whatever its metric says, with the
rule `constraint` and a reason naming the limit and the value. The engine judges by them, the
agents are told them (the brief, MCP `research_status`), so one definition lives here, beside
the metric."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .records import Experiment

_KEY = re.compile(r"^[A-Za-z_][\w.]*$")  # a summary key, as the run contract prints it


@dataclass(frozen=True)
class Constraint:
    key: str  # a summary key the trainer prints: peak_vram_mb, num_params_M, artifact_bytes, ...
    ceiling: float  # the most it may be

    def __post_init__(self) -> None:
        if not _KEY.match(self.key):
            raise ValueError(f"a constraint names a summary key (letters, digits, '_', '.'), not {self.key!r}")
        if isinstance(self.ceiling, bool) or not isinstance(self.ceiling, (int, float)) or not math.isfinite(self.ceiling):
            raise ValueError(f"the limit on {self.key} must be a number, not {self.ceiling!r}")

    def text(self) -> str:
        return f"{self.key} <= {_number(self.ceiling)}"

    def broken_by(self, exp: Experiment) -> str | None:
        """Why the run breaks this constraint, or None. A run that does not report the key
        is not judged by it (the trainer may not print it on every device)."""
        raw = exp.summary.get(self.key, exp.extra.get(self.key))
        try:
            value = float(raw) if raw is not None else None
        except (TypeError, ValueError):
            return None
        if value is None or value <= self.ceiling:
            return None
        return f"{self.key} {_number(value)} is past the limit {_number(self.ceiling)}"


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


def broken(exp: Experiment, constraints: tuple[Constraint, ...]) -> str | None:
    """The first constraint the run breaks, as a reason; None when it respects them all."""
    return next((why for c in constraints if (why := c.broken_by(exp)) is not None), None)


def parse(text: str) -> Constraint:
    """`KEY<=VALUE` (or KEY=VALUE) from the command line."""
    key, sep, value = text.replace("<=", "=").partition("=")
    try:
        return Constraint(key.strip(), float(value))
    except ValueError:
        raise ValueError(f"--constraint takes KEY<=NUMBER (peak_vram_mb<=60000, say), not {text!r}") from None

"""The changes one constant allows, coarsest level first, and how a change is written into the
file: multiplicative steps for floats, +-1/+-2 for small ints, doubling for powers of two,
fractions kept inside [0, 1), layers flipped in a window pattern. A batch-size change must
still divide, and every edit must read back."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Callable, Iterable

from .knobs import Knob, find_knobs

FACTORS = (0.5, 0.7, 0.85, 1.2, 1.4, 2.0)
# Multiplicative steps, coarsest first: a constant is offered a finer level only once every
# change at the coarser ones has been tried around its value, so a stalled search keeps
# looking closer instead of running dry.
LEVELS = (FACTORS, (0.9, 1.1), (0.95, 1.05), (0.975, 1.025))
INT_STEPS = (-2, -1, 1, 2)
# On a plateau (ProposalRequest.plateau) the search widens: bolder moves than any level's,
# offered before the rest (level WIDE), since the small ones around the frontier stopped paying.
WIDE = -1
WIDE_FACTORS = (0.25, 4.0)
WIDE_INT_STEPS = (-4, -3, 3, 4)
SMALL_INT = 16  # below this an int moves by steps; above, by the float factors
FROM_ZERO = (0.01, 0.1, 1.0)  # a float at 0.0 has no scale to multiply: try absolute values
FROM_ZERO_FRACTION = (0.02, 0.05, 0.1)
FRACTION_HINTS = ("RATIO", "FRAC", "MOMENTUM", "BETA")
# Layer counts read better as +-1, +-2 even when they happen to be a power of two.
STEPPED_NAMES = ("DEPTH", "N_LAYER", "*_LAYERS")
TOTAL_BATCH, DEVICE_BATCH = "TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE"


@dataclass(frozen=True)
class Change:
    knob: Knob
    values: tuple[int | float | str, ...]
    texts: tuple[str, ...]
    how: str  # "x1.4", "+1", "/2", "from 0", ...
    direction: int  # +1 raises the value, -1 lowers it, 0 for patterns
    level: int = 0  # index into LEVELS (WIDE: a plateau's bolder move); moves not multiplicative have level 0

    @property
    def key(self) -> str:
        shown = [str(v) if isinstance(v, str) else t for v, t in zip(self.values, self.texts)]
        if self.knob.profiles == (None,):
            return f"{self.knob.name}={shown[0]}"
        return f"{self.knob.name}=" + ",".join(f"{p}:{s}" for p, s in zip(self.knob.profiles, shown))

    @property
    def description(self) -> str:
        how = self.how
        if self.knob.profiles != (None,):
            how += "; " + "/".join(str(p) for p in self.knob.profiles)
        old, new = "/".join(self.knob.texts), "/".join(self.texts)
        return f"{self.knob.name} {old} -> {new} ({how})" if how else f"{self.knob.name} {old} -> {new}"

    @property
    def parts(self) -> tuple[Change, ...]:
        """The single changes made: this one (a `Pair` makes two)."""
        return (self,)


@dataclass(frozen=True)
class Pair:
    """Two near misses on different constants, made together."""

    parts: tuple[Change, Change]  # in key order, so the pair's key and description are stable
    gain: float  # the two near misses' measured improvements over the frontier, added up

    @property
    def key(self) -> str:
        return " + ".join(c.key for c in self.parts)

    @property
    def description(self) -> str:
        return " + ".join(c.description for c in self.parts)


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _round3(value: float) -> float:
    return float(f"{value:.3g}")


def _is_power_of_two(value) -> bool:
    return isinstance(value, int) and value > 0 and value & (value - 1) == 0


def _int_text(value: int, old_text: str) -> str:
    if re.fullmatch(r"2\s*\*\*\s*\d+", old_text) and _is_power_of_two(value):
        return f"2**{value.bit_length() - 1}"  # keep the reader's exponent form
    return f"{value:_}" if "_" in old_text else str(value)


def _fraction_move(value: float, factor: float) -> float | None:
    """A fraction moved up (factor > 1) or down, never leaving [0, 1): values past one half
    scale their distance to 1 instead, so 0.95 -> 0.975 rather than a clamp at the edge."""
    if value <= 0.5:
        moved = _round3(value * factor)
        return moved if moved < 1 else None
    gap = (1 - value) / factor
    moved = _round3(1 - gap)
    # Three digits of 0.9995 read 1.0: then keep the digits of the gap instead.
    return moved if moved < 1 and moved != value else round(1 - _round3(gap), 12)


Move = tuple[int, str, int, Callable]  # (level, how, direction, value -> new value or None)


def _scaled(how: str, move: Callable, wide: bool) -> list[Move]:
    """`move(value, factor)` at every factor of every level, named `how` and the factor."""
    levels = ([(WIDE, WIDE_FACTORS)] if wide else []) + list(enumerate(LEVELS))
    return [(level, f"{how}{f:g}", 1 if f > 1 else -1, lambda v, f=f: move(v, f))
            for level, factors in levels for f in factors]


def _moves(knob: Knob, wide: bool = False) -> list[Move]:
    """Every move this knob allows, coarsest level first (`wide`: a plateau's bolder ones
    before them); one move applies to every profile's entry alike."""
    values = knob.values
    if all(isinstance(v, int) for v in values):
        if all(_is_power_of_two(v) for v in values) and not matches(knob.name, STEPPED_NAMES):
            halves = [(0, "/2", -1, lambda v: v // 2)] if min(values) >= 2 else []
            bold = ([(WIDE, "x4", 1, lambda v: v * 4)] + ([(WIDE, "/4", -1, lambda v: v // 4)] if min(values) >= 4
                                                           else [])) if wide else []
            return bold + [(0, "x2", 1, lambda v: v * 2)] + halves
        if max(values) < SMALL_INT:
            floor = 1 if min(values) >= 1 else 0
            steps = [(WIDE, s) for s in WIDE_INT_STEPS] * wide + [(0, s) for s in INT_STEPS]
            return [(level, f"{s:+d}", 1 if s > 0 else -1, lambda v, s=s: v + s if v + s >= floor else None)
                    for level, s in steps]
        return _scaled("x", lambda v, f: max(1, int(_round3(v * f))), wide)
    fraction = matches(knob.name, [f"*{h}*" for h in FRACTION_HINTS]) and all(0 <= v <= 1 for v in values)
    if all(v == 0 for v in values):
        return [(0, "from 0", 1, lambda v, a=a: a) for a in (FROM_ZERO_FRACTION if fraction else FROM_ZERO)]
    if fraction:
        if all(v == 1 for v in values):
            return [(0, "from 1", -1, lambda v, a=a: 1 - a) for a in FROM_ZERO_FRACTION]
        return _scaled("x" if max(values) <= 0.5 else "gap to 1 /", _fraction_move, wide)
    return _scaled("x", lambda v, f: _round3(v * f), wide)


def _pattern_variants(pattern: str) -> list[str]:
    """Each layer flipped S<->L, each position dropped, and full context everywhere."""
    flip = {"S": "L", "L": "S"}
    flips = [pattern[:i] + flip[c] + pattern[i + 1:] for i, c in enumerate(pattern)]
    drops = [pattern[:i] + pattern[i + 1:] for i in range(len(pattern))]
    variants = dict.fromkeys(v for v in flips + drops + ["L" * len(pattern)] if v and v != pattern)
    return list(variants)


def changes_for(knob: Knob, wide: bool = False) -> list[Change]:
    """Every one-step change of this knob at every level, coarsest first, in a fixed order
    (`wide`: with a plateau's bolder moves first)."""
    if isinstance(knob.values[0], str):
        old = knob.values[0]
        return [Change(knob, (new,), (knob.texts[0].replace(old, new, 1),), "", 0)
                for new in _pattern_variants(old)]
    changes: dict[str, Change] = {}
    for level, how, direction, move in _moves(knob, wide):
        new = [move(v) for v in knob.values]
        if any(n is None or n == v for n, v in zip(new, knob.values)):
            continue  # every profile moves, or the move is not made at all
        if all(isinstance(v, int) for v in knob.values):
            texts = tuple(_int_text(n, t) for n, t in zip(new, knob.texts))
        else:
            new = [float(n) for n in new]
            texts = tuple(repr(n) for n in new)
        change = Change(knob, tuple(new), texts, how, direction, level)
        # A finer step that rounds to a coarser one's value is that change again: the coarse
        # one names it.
        changes.setdefault(change.key, change)
    return list(changes.values())


def batches_still_divide(change: Change, knobs: dict[str, Knob], lengths: dict[str | None, int]) -> bool:
    """TOTAL_BATCH_SIZE (tokens per optimizer step) must stay a multiple of DEVICE_BATCH_SIZE
    rows of context, or the trainer asserts at start-up. With the context length unknown, the
    new tokens-per-row ratio must be a whole multiple of the parent's, which the parent proved
    divides."""
    name = change.knob.name
    other = knobs.get(DEVICE_BATCH if name == TOTAL_BATCH else TOTAL_BATCH)
    if name not in (TOTAL_BATCH, DEVICE_BATCH) or other is None:
        return True
    before = dict(zip(change.knob.profiles, change.knob.values))
    after = dict(zip(change.knob.profiles, change.values))
    fixed = dict(zip(other.profiles, other.values))
    for profile in (set(before) | set(fixed)) - {None} or {None}:
        def at(table):
            return table.get(profile, table.get(None))
        total_old, rows_old = (at(before), at(fixed)) if name == TOTAL_BATCH else (at(fixed), at(before))
        total_new, rows_new = (at(after), at(fixed)) if name == TOTAL_BATCH else (at(fixed), at(after))
        if None in (total_old, rows_old, total_new, rows_new):
            return False  # a profile only one of the two tables knows: cannot tell, so do not
        context = lengths.get(profile, lengths.get(None))
        if context is not None:
            if total_new % (rows_new * context):
                return False
        elif (total_new * rows_old) % (total_old * rows_new):
            return False
    return True


def apply(source: str, change: Change) -> str:
    """The source with only the changed literals' text replaced on the knob's line."""
    lines = source.split("\n")  # not splitlines: it also splits on form feeds, which ast does not
    raw = lines[change.knob.line - 1].encode("utf-8")
    for (start, end), text in sorted(zip(change.knob.spans, change.texts), reverse=True):
        raw = raw[:start] + text.encode("utf-8") + raw[end:]
    lines[change.knob.line - 1] = raw.decode("utf-8")
    return "\n".join(lines)


def apply_all(source: str, proposed: Change | Pair) -> str:
    """The source with every part of a proposal made, the last in the file first: two constants
    may share a line (`A = 1; B = 2`), and an edit must not move the columns of one still to make."""
    for change in sorted(proposed.parts, key=lambda c: (c.knob.line, c.knob.spans), reverse=True):
        source = apply(source, change)
    return source


def reads_back(edited: str, proposed: Change | Pair) -> bool:
    """Whether the edited file still parses and holds every part's new values."""
    try:
        knobs = find_knobs(edited)
    except SyntaxError:
        return False
    return all(c.knob.name in knobs and knobs[c.knob.name].values == c.values for c in proposed.parts)

"""The offline mutator: a proposer with no LLM behind it.

It reads the hyperparameter block of the editable file with `ast`, changes one constant's
literal by a step around the frontier's value (text of that literal only, so the diff is one
line), steps finer once the coarse steps around that value have been tried, and never proposes
the same change twice on one parent. Changes discarded on the parent that still measured better
than it (near misses: a gain smaller than the noise the engine asks for) are offered again two
at a time, on different constants, since two such gains together are easier to tell from the
noise. It is the `--agent offline` proposer and the baseline the LLM agents have to beat."""

from __future__ import annotations

import ast
import fnmatch
import functools
import hashlib
import itertools
import random
import re
import threading
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from agents import pysource
from agents.hyperparams import constant_number
from agents.proposer import PastExperiment, Proposal, ProposalError, ProposalRequest

# Not hyperparameters, or a change that measures nothing: the seed only reshuffles noise,
# compile and timeouts change speed of start-up, HEAD_DIM is tied to kernel tile sizes,
# peak FLOPS only rescales the reported MFU, and the eval and context constants belong to
# the fixed harness (changing them would move the yardstick, not the model).
DEFAULT_EXCLUDE = (
    "SEED", "COMPILE", "HEAD_DIM", "FA3_LOAD_TIMEOUT", "*_TIMEOUT", "*PEAK*FLOPS*",
    "TIME_BUDGET", "MAX_SEQ_LEN", "VOCAB_SIZE", "*EVAL*", "STARTUP_EXCLUDE_STEPS",
)
FACTORS = (0.5, 0.7, 0.85, 1.2, 1.4, 2.0)
# Multiplicative steps, coarsest first: a constant is offered a finer level only once every
# change at the coarser ones has been tried around its value, so a stalled search keeps
# looking closer instead of running dry.
LEVELS = (FACTORS, (0.9, 1.1), (0.95, 1.05), (0.975, 1.025))
INT_STEPS = (-2, -1, 1, 2)
SMALL_INT = 16  # below this an int moves by steps; above, by the float factors
FROM_ZERO = (0.01, 0.1, 1.0)  # a float at 0.0 has no scale to multiply: try absolute values
FROM_ZERO_FRACTION = (0.02, 0.05, 0.1)
FRACTION_HINTS = ("RATIO", "FRAC", "MOMENTUM", "BETA")
# Layer counts read better as +-1, +-2 even when they happen to be a power of two.
STEPPED_NAMES = ("DEPTH", "N_LAYER", "*_LAYERS")
WINDOW_LETTERS = frozenset("SL")  # nanochat's sliding-window pattern: Short / Long per layer
TOTAL_BATCH, DEVICE_BATCH = "TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE"
# Once near misses can be paired, how often a proposal is a pair rather than a single change:
# pairs stack what was measured, singles keep exploring what was not.
PAIR_CHANCE = 0.5
PAIR_HYPOTHESIS = "two changes that each measured better than the frontier, inside noise, stack"

_UPPER = re.compile(r"^[A-Z][A-Z0-9_]*$")
_CONTEXT = re.compile(r"SEQ(UENCE)?_LEN(GTH)?$")

# (name, direction) -> why the change might lower val_bpb; direction +1 raises the value.
HYPOTHESES = {
    ("MATRIX_LR", 1): "a higher Muon learning rate converges faster within the fixed budget",
    ("MATRIX_LR", -1): "a lower Muon learning rate is more stable and ends at a lower loss",
    ("EMBEDDING_LR", 1): "embeddings that learn faster help a short run",
    ("EMBEDDING_LR", -1): "a calmer embedding learning rate reduces noise in the residual stream",
    ("UNEMBEDDING_LR", 1): "a faster-learning lm_head fits the output distribution sooner",
    ("UNEMBEDDING_LR", -1): "a slower lm_head keeps the logits stable",
    ("SCALAR_LR", 1): "the residual scalars find their balance sooner with a higher rate",
    ("SCALAR_LR", -1): "the residual scalars overshoot less with a lower rate",
    ("WEIGHT_DECAY", 1): "stronger weight decay regularises the matrices and generalises better",
    ("WEIGHT_DECAY", -1): "weaker weight decay lets a short run fit faster",
    ("DEPTH", 1): "a deeper model is worth its slower steps",
    ("DEPTH", -1): "a shallower model takes more steps in the budget and wins on throughput",
    ("ASPECT_RATIO", 1): "a wider model learns more per token",
    ("ASPECT_RATIO", -1): "a narrower model trains on more tokens in the same time",
    ("DEVICE_BATCH_SIZE", 1): "bigger micro-batches keep the GPU busier",
    ("DEVICE_BATCH_SIZE", -1): "smaller micro-batches free memory at little cost in speed",
    ("TOTAL_BATCH_SIZE", 1): "bigger optimizer batches give cleaner gradients",
    ("TOTAL_BATCH_SIZE", -1): "smaller optimizer batches fit more updates into the budget",
    ("WARMUP_RATIO", 1): "a warmup steadies the first updates",
    ("WARMUP_RATIO", -1): "less warmup leaves more time at the peak learning rate",
    ("WARMDOWN_RATIO", 1): "a longer cooldown anneals to a lower final loss",
    ("WARMDOWN_RATIO", -1): "a shorter cooldown keeps the peak learning rate longer",
    ("FINAL_LR_FRAC", 1): "a higher floor keeps learning until the end",
    ("FINAL_LR_FRAC", -1): "annealing closer to zero settles into a lower loss",
    ("MUON_MOMENTUM", 1): "more momentum smooths the Muon updates",
    ("MUON_MOMENTUM", -1): "less momentum reacts faster in a short run",
    ("LOGIT_SOFTCAP", 1): "a looser softcap lets the model be confident where it should be",
    ("LOGIT_SOFTCAP", -1): "a tighter softcap keeps the logits and the loss stable",
    ("ROPE_BASE", 1): "a larger RoPE base resolves long-range positions better",
    ("ROPE_BASE", -1): "a smaller RoPE base sharpens local position information",
    ("SHORT_WINDOW_DIVISOR", 1): "shorter sliding windows make the short layers cheaper",
    ("SHORT_WINDOW_DIVISOR", -1): "longer sliding windows give the short layers more context",
    ("WINDOW_PATTERN", 0): "a different mix of short and full-context layers trades speed for context",
}


@dataclass(frozen=True)
class Knob:
    """One hyperparameter assignment found in the file: `NAME = literal` on one line, or
    `NAME = {"full": a, "tiny": b}[PROFILE]` (profiles then name each entry)."""

    name: str
    line: int  # 1-based
    spans: tuple[tuple[int, int], ...]  # byte columns of each literal on that line
    profiles: tuple[str | None, ...]  # (None,) for a plain constant
    values: tuple[int | float | str, ...]
    texts: tuple[str, ...]  # each literal's source text


@dataclass(frozen=True)
class Change:
    knob: Knob
    values: tuple[int | float | str, ...]
    texts: tuple[str, ...]
    how: str  # "x1.4", "+1", "/2", "from 0", ...
    direction: int  # +1 raises the value, -1 lowers it, 0 for patterns
    level: int = 0  # index into LEVELS; moves that are not multiplicative have only level 0

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


# --- reading the file -------------------------------------------------------------------

def _parse_number(text: str) -> int | float | None:
    try:
        return constant_number(pysource.parse(text, mode="eval").body)
    except SyntaxError:
        return None


def _single_line(node: ast.AST, line: int) -> bool:
    return node.lineno == node.end_lineno == line


def _knob(name: str, value: ast.AST, line: int, raw: bytes) -> Knob | None:
    def text(node):
        return raw[node.col_offset:node.end_col_offset].decode("utf-8")

    number = constant_number(value)
    if number is not None:
        return Knob(name, line, ((value.col_offset, value.end_col_offset),), (None,), (number,),
                    (text(value),)) if number >= 0 else None
    if (isinstance(value, ast.Subscript) and isinstance(value.value, ast.Dict)
            and isinstance(value.slice, ast.Name)):
        table = value.value
        keys = [k.value if isinstance(k, ast.Constant) and isinstance(k.value, str) else None
                for k in table.keys]
        numbers = [constant_number(v) for v in table.values]
        if (not keys or None in keys or len(set(keys)) != len(keys)
                or any(n is None or n < 0 for n in numbers)
                or not all(_single_line(v, line) for v in table.values)):
            return None
        return Knob(name, line, tuple((v.col_offset, v.end_col_offset) for v in table.values),
                    tuple(keys), tuple(numbers), tuple(text(v) for v in table.values))
    if (isinstance(value, ast.Constant) and isinstance(value.value, str)
            and 0 < len(value.value) <= 16 and set(value.value) <= WINDOW_LETTERS):
        return Knob(name, line, ((value.col_offset, value.end_col_offset),), (None,),
                    (value.value,), (text(value),))
    return None


def find_knobs(source: str) -> dict[str, Knob]:
    """Every module-level UPPER_CASE assignment of a numeric literal, a per-profile table of
    them, or a window pattern, by name. Names assigned twice are left out: which one counts is
    not a one-line question."""
    tree = pysource.parse(source)
    lines = source.split("\n")
    assigned = Counter(t.id for s in tree.body if isinstance(s, (ast.Assign, ast.AnnAssign))
                       for t in (s.targets if isinstance(s, ast.Assign) else [s.target])
                       if isinstance(t, ast.Name))
    knobs = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target, value = stmt.targets[0], stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            target, value = stmt.target, stmt.value
        else:
            continue
        if (not isinstance(target, ast.Name) or not _UPPER.match(target.id)
                or assigned[target.id] > 1 or not _single_line(stmt, stmt.lineno)):
            continue
        knob = _knob(target.id, value, stmt.lineno, lines[stmt.lineno - 1].encode("utf-8"))
        if knob is not None:
            knobs[knob.name] = knob
    return knobs


def context_lengths(worktree: Path, sources: Iterable[str]) -> dict[str | None, int]:
    """The training context length, per profile where profiles exist: module-level
    `MAX_SEQ_LEN = 2048`, or `Profile(name="tiny", max_seq_len=256, ...)` in the fixed harness
    (prepare.py) or the editable file. Empty when it cannot be seen."""
    harness = worktree / "prepare.py"
    texts = list(sources) + ([harness.read_bytes().decode("utf-8", "replace")] if harness.is_file() else [])
    lengths: dict[str | None, int] = {}
    for text in texts:
        for profile, length in _lengths_in(text):
            lengths.setdefault(profile, length)
    return lengths


@functools.lru_cache(maxsize=16)
def _lengths_in(text: str) -> tuple[tuple[str | None, int], ...]:
    # Cached by content: every proposal asks again, and walking two whole files each time
    # would cost more than the rest of a proposal.
    try:
        tree = pysource.parse(text)
    except SyntaxError:
        return ()
    found = []
    for stmt in tree.body:
        if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name) and _CONTEXT.search(stmt.targets[0].id)
                and isinstance(constant_number(stmt.value), int)):
            found.append((None, constant_number(stmt.value)))
    if "max_seq_len" in text:
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                args = {k.arg: k.value for k in node.keywords if k.arg}
                name, length = args.get("name"), args.get("max_seq_len")
                length = None if length is None else constant_number(length)
                if isinstance(name, ast.Constant) and isinstance(name.value, str) and isinstance(length, int):
                    found.append((name.value, length))
    return tuple(found)


# --- the moves ----------------------------------------------------------------------------

def _matches(name: str, patterns: Iterable[str]) -> bool:
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


def _scaled(how: str, move: Callable) -> list[Move]:
    """`move(value, factor)` at every factor of every level, named `how` and the factor."""
    return [(level, f"{how}{f:g}", 1 if f > 1 else -1, lambda v, f=f: move(v, f))
            for level, factors in enumerate(LEVELS) for f in factors]


def _moves(knob: Knob) -> list[Move]:
    """Every move this knob allows, coarsest level first; one move applies to every
    profile's entry alike."""
    values = knob.values
    if all(isinstance(v, int) for v in values):
        if all(_is_power_of_two(v) for v in values) and not _matches(knob.name, STEPPED_NAMES):
            halves = [(0, "/2", -1, lambda v: v // 2)] if min(values) >= 2 else []
            return [(0, "x2", 1, lambda v: v * 2)] + halves
        if max(values) < SMALL_INT:
            floor = 1 if min(values) >= 1 else 0
            return [(0, f"{s:+d}", 1 if s > 0 else -1, lambda v, s=s: v + s if v + s >= floor else None)
                    for s in INT_STEPS]
        return _scaled("x", lambda v, f: max(1, int(_round3(v * f))))
    fraction = _matches(knob.name, [f"*{h}*" for h in FRACTION_HINTS]) and all(0 <= v <= 1 for v in values)
    if all(v == 0 for v in values):
        return [(0, "from 0", 1, lambda v, a=a: a) for a in (FROM_ZERO_FRACTION if fraction else FROM_ZERO)]
    if fraction:
        if all(v == 1 for v in values):
            return [(0, "from 1", -1, lambda v, a=a: 1 - a) for a in FROM_ZERO_FRACTION]
        return _scaled("x" if max(values) <= 0.5 else "gap to 1 /", _fraction_move)
    return _scaled("x", lambda v, f: _round3(v * f))


def _pattern_variants(pattern: str) -> list[str]:
    """Each layer flipped S<->L, each position dropped, and full context everywhere."""
    flip = {"S": "L", "L": "S"}
    flips = [pattern[:i] + flip[c] + pattern[i + 1:] for i, c in enumerate(pattern)]
    drops = [pattern[:i] + pattern[i + 1:] for i in range(len(pattern))]
    variants = dict.fromkeys(v for v in flips + drops + ["L" * len(pattern)] if v and v != pattern)
    return list(variants)


def changes_for(knob: Knob) -> list[Change]:
    """Every one-step change of this knob at every level, coarsest first, in a fixed order."""
    if isinstance(knob.values[0], str):
        old = knob.values[0]
        return [Change(knob, (new,), (knob.texts[0].replace(old, new, 1),), "", 0)
                for new in _pattern_variants(old)]
    changes: dict[str, Change] = {}
    for level, how, direction, move in _moves(knob):
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


def _notes(change: Change) -> dict:
    """What a single change records with its proposal: the constant, its old and new text."""
    return {"name": change.knob.name, "old": "/".join(change.knob.texts), "new": "/".join(change.texts)}


def _recorded(notes: dict) -> list[dict]:
    """The notes of each single change an experiment made, from what this mutator recorded:
    a pair's two, or the experiment's own notes."""
    pair = notes.get("pair")
    return [part for part in pair if isinstance(part, dict)] if isinstance(pair, list) else [notes]


def kept_directions(history: Iterable[PastExperiment]) -> Counter:
    """(name, direction) -> how many kept experiments moved that constant that way, from the
    notes the mutator recorded with its own proposals (the constant, its old and new text, for
    each part of a pair)."""
    kept: Counter = Counter()
    for past in history:
        if past.decision != "keep":
            continue
        for notes in _recorded(past.notes):
            name, old, new = (notes.get(k) for k in ("name", "old", "new"))
            if not isinstance(name, str) or old is None or new is None:
                continue
            old, new = (_parse_number(str(text).split("/")[0]) for text in (old, new))
            if old is not None and new is not None and old != new:
                kept[(name, 1 if new > old else -1)] += 1
    return kept


def hypothesis(change: Change, kept: Counter) -> str:
    verb = {1: "raising", -1: "lowering", 0: "changing"}[change.direction]
    text = (HYPOTHESES.get((change.knob.name, change.direction))
            or f"{verb} {change.knob.name} lowers val_bpb within the fixed budget")
    if change.direction and kept[(change.knob.name, change.direction)]:
        text += " (a step this way was kept before)"
    return text


# --- the proposer -------------------------------------------------------------------------

# A lane runs one proposal while it drafts the next, and a finished run may still wait for its
# decision. Anything older a lane was given that the history never heard of was dropped on the
# way (a replay that conflicted with a new frontier), and must not hold its constant for good.
IN_FLIGHT_PER_LANE = 2


def _offers(candidates: list[Change], blocked: set[str], elsewhere: set[str]) -> list[Change]:
    """What each constant offers, in candidate order: the changes at the coarsest level that
    still has one not blocked on this parent; of those, the ones never tried anywhere, or once
    they are used up, the ones tried on another parent."""
    open_by_knob: dict[str, list[Change]] = {}
    for change in candidates:
        if change.key not in blocked:
            open_by_knob.setdefault(change.knob.name, []).append(change)
    offers = []
    for changes in open_by_knob.values():
        level = min(c.level for c in changes)
        at_level = [c for c in changes if c.level == level]
        offers += [c for c in at_level if c.key not in elsewhere] or at_level
    return offers


def near_misses(request: ProposalRequest, candidates: Iterable[Change]) -> list[tuple[Change, float]]:
    """The single changes discarded on this parent that measured better than the frontier all
    the same, each with how much better: a gain the engine could not tell from the noise.
    Only this mutator's own changes that can still be made to the parent's file count (their
    notes name the constant and both texts the candidate has)."""
    frontier, metric = request.frontier_val_bpb, request.metric
    if frontier is None:
        return []
    by_key = {c.key: c for c in candidates}
    near: dict[str, tuple[Change, float]] = {}
    for past in request.history:
        change = by_key.get(past.change)
        if (change is None or past.parent != request.parent_commit or past.status != "ok"
                or past.decision != "discard" or past.val_bpb is None
                or not metric.better(past.val_bpb, frontier)
                or any(past.notes.get(k) != v for k, v in _notes(change).items())):
            continue
        near[change.key] = (change, metric.improvement(past.val_bpb - frontier))
    return list(near.values())


def _pairs(near: list[tuple[Change, float]], blocked: set[str], busy: set[str]) -> list[Pair]:
    """Every pair of near misses on two constants not blocked on this parent: those that no
    proposal in flight is changing first, then the largest measured gain together, then by key.
    The two batch sizes are never paired: each was checked to divide with the other as it is."""
    pairs = []
    for (a, gain_a), (b, gain_b) in itertools.combinations(near, 2):
        names = {a.knob.name, b.knob.name}
        if len(names) < 2 or names == {TOTAL_BATCH, DEVICE_BATCH}:
            continue
        pair = Pair(tuple(sorted((a, b), key=lambda c: c.key)), gain_a + gain_b)
        if pair.key not in blocked:
            pairs.append(pair)
    return sorted(pairs, key=lambda p: (any(c.knob.name in busy for c in p.parts), -p.gain, p.key))


def _draw(rng: random.Random, offers: list[Change], busy: set[str], elsewhere: set[str],
          kept: Counter) -> Change:
    """One of the preferred offers, in proportion to its weight (a direction kept before weighs
    more). Preferred: changes to constants that no proposal in flight is changing (two lanes
    editing one line conflict when both are kept), then changes never tried anywhere before
    those tried on another parent.

    The first draw is among the never-tried offers (all of them when none is left), as it was
    before lanes were told apart, so a lane's choice stays what it was unless it lands where
    another lane is at work; only then a second draw among the preferred ones. The preferred
    ones are either all among the first draw's or none of them, so each is still drawn in
    proportion to its weight."""
    def rank(change: Change) -> tuple[bool, bool]:
        return change.knob.name in busy, change.key in elsewhere

    def weighted(pool: list[Change]) -> Change:
        return rng.choices(pool, [1 + 2 * kept[(c.knob.name, c.direction)] for c in pool])[0]

    best = min(map(rank, offers))
    change = weighted([c for c in offers if c.key not in elsewhere] or offers)
    return change if rank(change) == best else weighted([c for c in offers if rank(c) == best])


class OfflineMutator:
    """Perturbs one hyperparameter per proposal around the frontier, or two whose changes were
    near misses, deterministically given the seed, the request and what it handed out before,
    and never hands out the same change twice on one parent."""

    name = "offline-mutator"

    def __init__(self, seed: int = 0, include: Iterable[str] | None = None,
                 exclude: Iterable[str] = DEFAULT_EXCLUDE):
        self.seed = seed
        self.include = None if include is None else tuple(include)
        self.exclude = tuple(exclude)
        self._lock = threading.Lock()  # lanes call propose from their own threads
        self._handed_out: dict[str, set[str]] = {}  # parent commit -> keys given for it
        # lane -> (parent commit, key, constants changed) of its latest proposals, oldest first
        self._given_to: dict[int, deque[tuple[str, str, tuple[str, ...]]]] = {}

    def _wanted(self, name: str) -> bool:
        if self.include is not None and not _matches(name, self.include):
            return False
        return not _matches(name, self.exclude)

    def _target(self, request: ProposalRequest) -> tuple[str, str, dict[str, Knob]]:
        """The first editable file with hyperparameters this mutator may change."""
        for relative in request.editable_files:
            path = request.worktree / relative
            try:
                source = path.read_bytes().decode("utf-8")
                knobs = find_knobs(source)
            except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
                continue
            if any(self._wanted(name) for name in knobs):
                return relative, source, knobs
        files = ", ".join(request.editable_files)
        raise ProposalError(f"no hyperparameter assignments to change in {files}")

    def _stream(self, request: ProposalRequest, source: str) -> random.Random:
        """Seeded by the code being changed, not by the commit that holds it: the same trainer
        gets the same proposals in any repository, whatever its history or its other files
        (an edit to prepare.py or a README does not reshuffle the search)."""
        past = "|".join(f"{p.change}:{p.decision}" for p in request.history)
        code = hashlib.sha256(source.encode("utf-8")).hexdigest()
        fields = (self.seed, request.lane, request.attempt, code, past)
        digest = hashlib.sha256("\0".join(map(str, fields)).encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "big"))

    def _in_flight(self, history: Iterable[PastExperiment]) -> set[str]:
        """The constants of the changes handed out whose outcome the history does not hold yet
        (no decision, and no crash or rejection either): another lane drafts or runs them."""
        known = {(p.parent, p.change) for p in history if p.decision is not None or p.status != "ok"}
        return {name for given in self._given_to.values() for parent, key, names in given
                if (parent, key) not in known and (None, key) not in known for name in names}

    def propose(self, request: ProposalRequest) -> Proposal:
        """One change to one constant, or a pair of near misses, written to the worktree. A
        change or pair is blocked once it was handed out or tried on this parent (or by an
        experiment whose parent is unknown); the rest are offered in this order:

        1. per constant, only the coarsest level (LEVELS) with a change left open; at that
           level its never-tried changes, and only when they are used up the ones tried on
           another parent, as the frontier has moved since;
        2. across constants, those that no proposal in flight is changing come first, then
           never-tried changes before retries;
        3. one drawn from the best of those, weighted towards directions kept before (`_draw`);
        4. once a pair of near misses is open (`_pairs`), it replaces that draw with chance
           PAIR_CHANCE, tossed after the draw so that a line's proposals stay what they were
           until it has near misses; the best pair is made, one whose constants are not in
           flight first. With no single change left open, pairs only.
        """
        relative, source, knobs = self._target(request)
        lengths = context_lengths(request.worktree, [source])
        candidates = [c for name, knob in knobs.items() if self._wanted(name)
                      for c in changes_for(knob) if batches_still_divide(c, knobs, lengths)]
        kept = kept_directions(request.history)
        rng = self._stream(request, source)
        here = request.parent_commit
        with self._lock:
            given = self._handed_out.setdefault(here, set())
            blocked = given | {p.change for p in request.history if p.change and p.parent in (None, here)}
            elsewhere = {p.change for p in request.history if p.change and p.parent not in (None, here)}
            elsewhere |= set().union(*(keys for parent, keys in self._handed_out.items() if parent != here))
            busy = self._in_flight(request.history)
            near = near_misses(request, candidates)
            while True:
                offers = _offers(candidates, blocked, elsewhere)
                pairs = _pairs(near, blocked, busy)
                if not offers and not pairs:
                    raise ProposalError(f"every change the offline mutator knows for {relative} "
                                        f"at {here[:12]} has been tried", exhausted=True)
                proposed = _draw(rng, offers, busy, elsewhere, kept) if offers else None
                if pairs and (proposed is None or rng.random() < PAIR_CHANCE):
                    proposed = pairs[0]
                edited = apply_all(source, proposed)
                # Recorded before the check: an edit that does not read back is dropped for
                # good on this parent rather than retried.
                given.add(proposed.key)
                blocked.add(proposed.key)
                if reads_back(edited, proposed):  # never hand out an edit that breaks the file
                    break
            lane = self._given_to.setdefault(request.lane, deque(maxlen=IN_FLIGHT_PER_LANE))
            lane.append((here, proposed.key, tuple(c.knob.name for c in proposed.parts)))
        (request.worktree / relative).write_bytes(edited.encode("utf-8"))
        if isinstance(proposed, Pair):
            why, notes = PAIR_HYPOTHESIS, {"pair": [_notes(c) for c in proposed.parts]}
        else:
            why, notes = hypothesis(proposed, kept), _notes(proposed)
        return Proposal(description=proposed.description, hypothesis=why, change=proposed.key,
                        agent=self.name, extra={"file": relative, **notes})

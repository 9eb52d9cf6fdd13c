"""The offline mutator: a proposer with no LLM behind it.

It reads the hyperparameter block of the editable file with `ast`, changes one constant's
literal by a small step around the frontier's value (text of that literal only, so the diff is
one line), and never proposes the same change twice. It is the `--agent offline` proposer and
the baseline the LLM agents have to beat."""

from __future__ import annotations

import ast
import fnmatch
import functools
import hashlib
import random
import re
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

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
INT_STEPS = (-2, -1, 1, 2)
SMALL_INT = 16  # below this an int moves by steps; above, by the float factors
FROM_ZERO = (0.01, 0.1, 1.0)  # a float at 0.0 has no scale to multiply: try absolute values
FROM_ZERO_FRACTION = (0.02, 0.05, 0.1)
FRACTION_HINTS = ("RATIO", "FRAC", "MOMENTUM", "BETA")
# Layer counts read better as +-1, +-2 even when they happen to be a power of two.
STEPPED_NAMES = ("DEPTH", "N_LAYER", "*_LAYERS")
WINDOW_LETTERS = frozenset("SL")  # nanochat's sliding-window pattern: Short / Long per layer
TOTAL_BATCH, DEVICE_BATCH = "TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE"

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


def _moves(knob: Knob) -> list[tuple[str, int, object]]:
    """(how, direction, value -> new value or None) for every move this knob allows; one
    move applies to every profile's entry alike."""
    values = knob.values
    if all(isinstance(v, int) for v in values):
        if all(_is_power_of_two(v) for v in values) and not _matches(knob.name, STEPPED_NAMES):
            halves = [("/2", -1, lambda v: v // 2)] if min(values) >= 2 else []
            return [("x2", 1, lambda v: v * 2)] + halves
        if max(values) < SMALL_INT:
            floor = 1 if min(values) >= 1 else 0
            return [(f"{s:+d}", 1 if s > 0 else -1, lambda v, s=s: v + s if v + s >= floor else None)
                    for s in INT_STEPS]
        return [(f"x{f:g}", 1 if f > 1 else -1, lambda v, f=f: max(1, int(_round3(v * f))))
                for f in FACTORS]
    fraction = _matches(knob.name, [f"*{h}*" for h in FRACTION_HINTS]) and all(0 <= v <= 1 for v in values)
    if all(v == 0 for v in values):
        return [("from 0", 1, lambda v, a=a: a) for a in (FROM_ZERO_FRACTION if fraction else FROM_ZERO)]
    if fraction:
        if all(v == 1 for v in values):
            return [("from 1", -1, lambda v, a=a: 1 - a) for a in FROM_ZERO_FRACTION]
        return [(f"x{f:g}" if max(values) <= 0.5 else f"gap to 1 /{f:g}",
                 1 if f > 1 else -1, lambda v, f=f: _fraction_move(v, f)) for f in FACTORS]
    return [(f"x{f:g}", 1 if f > 1 else -1, lambda v, f=f: _round3(v * f)) for f in FACTORS]


def _pattern_variants(pattern: str) -> list[str]:
    """Each layer flipped S<->L, each position dropped, and full context everywhere."""
    flip = {"S": "L", "L": "S"}
    flips = [pattern[:i] + flip[c] + pattern[i + 1:] for i, c in enumerate(pattern)]
    drops = [pattern[:i] + pattern[i + 1:] for i in range(len(pattern))]
    variants = dict.fromkeys(v for v in flips + drops + ["L" * len(pattern)] if v and v != pattern)
    return list(variants)


def changes_for(knob: Knob) -> list[Change]:
    """Every one-step change of this knob, in a fixed order."""
    if isinstance(knob.values[0], str):
        old = knob.values[0]
        return [Change(knob, (new,), (knob.texts[0].replace(old, new, 1),), "", 0)
                for new in _pattern_variants(old)]
    changes = []
    for how, direction, move in _moves(knob):
        new = [move(v) for v in knob.values]
        if any(n is None or n == v for n, v in zip(new, knob.values)):
            continue  # every profile moves, or the move is not made at all
        if all(isinstance(v, int) for v in knob.values):
            texts = tuple(_int_text(n, t) for n, t in zip(new, knob.texts))
        else:
            new = [float(n) for n in new]
            texts = tuple(repr(n) for n in new)
        changes.append(Change(knob, tuple(new), texts, how, direction))
    return changes


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


def kept_directions(history: Iterable[PastExperiment]) -> Counter:
    """(name, direction) -> how many kept experiments moved that constant that way, from the
    notes the mutator recorded with its own proposals (the constant, its old and new text)."""
    kept: Counter = Counter()
    for past in history:
        name, old, new = (past.notes.get(k) for k in ("name", "old", "new"))
        if past.decision != "keep" or not isinstance(name, str) or old is None or new is None:
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

class OfflineMutator:
    """Perturbs one hyperparameter per proposal around the frontier, deterministically given
    the seed and the request, and never hands out the same change twice on one parent."""

    name = "offline-mutator"

    def __init__(self, seed: int = 0, include: Iterable[str] | None = None,
                 exclude: Iterable[str] = DEFAULT_EXCLUDE):
        self.seed = seed
        self.include = None if include is None else tuple(include)
        self.exclude = tuple(exclude)
        self._lock = threading.Lock()  # lanes call propose from their own threads
        self._handed_out: dict[str, set[str]] = {}  # parent commit -> keys given for it

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

    def propose(self, request: ProposalRequest) -> Proposal:
        relative, source, knobs = self._target(request)
        lengths = context_lengths(request.worktree, [source])
        candidates = [c for name, knob in knobs.items() if self._wanted(name)
                      for c in changes_for(knob) if batches_still_divide(c, knobs, lengths)]
        kept = kept_directions(request.history)
        rng = self._stream(request, source)
        with self._lock:
            # History carries no parent commit, so any key in it may have been tried on this
            # parent: those are out, as are the keys this mutator gave for this parent.
            blocked = {p.change for p in request.history if p.change}
            blocked |= self._handed_out.setdefault(request.parent_commit, set())
            anywhere = set().union(*self._handed_out.values())
            while True:
                open_ = [c for c in candidates if c.key not in blocked]
                if not open_:
                    raise ProposalError(f"every change the offline mutator knows for {relative} "
                                        f"at {request.parent_commit[:12]} has been tried")
                pool = [c for c in open_ if c.key not in anywhere] or open_
                weights = [1 + 2 * kept[(c.knob.name, c.direction)] for c in pool]
                change = rng.choices(pool, weights)[0]
                edited = apply(source, change)
                # Recorded before the check: an edit that does not read back is dropped for
                # good on this parent rather than retried.
                self._handed_out[request.parent_commit].add(change.key)
                blocked.add(change.key)
                try:
                    check = find_knobs(edited).get(change.knob.name)
                except SyntaxError:
                    continue  # never hand out an edit that breaks the file
                if check is not None and check.values == change.values:
                    break
        (request.worktree / relative).write_bytes(edited.encode("utf-8"))
        return Proposal(
            description=change.description, hypothesis=hypothesis(change, kept), change=change.key,
            agent=self.name,
            extra={"file": relative, "name": change.knob.name,
                   "old": "/".join(change.knob.texts), "new": "/".join(change.texts)},
        )

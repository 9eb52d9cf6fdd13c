"""The constants an editable file offers the mutator: every module-level UPPER_CASE assignment
of a number, a per-profile table of numbers, or a sliding-window pattern, found with `ast` and
kept with the byte columns of each literal, so a change rewrites that text and nothing else."""

from __future__ import annotations

import ast
import functools
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from agents import pysource
from agents.hyperparams import constant_number

WINDOW_LETTERS = frozenset("SL")  # nanochat's sliding-window pattern: Short / Long per layer

_UPPER = re.compile(r"^[A-Z][A-Z0-9_]*$")
_CONTEXT = re.compile(r"SEQ(UENCE)?_LEN(GTH)?$")


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


def parse_number(text: str) -> int | float | None:
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

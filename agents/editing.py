"""The text logic behind the research agent's editing tools: pure functions on strings.
This module views and replaces snippets; `hyperparams.py` sets constants by name and
`changes.py` names a change so it is never tried twice.

Nothing here reads or writes a file. Every edit takes the file's text and returns an
`EditResult` with the new text, or raises `EditError` with a message the model can act on;
the caller writes the file only on success. The guarantees that keep an edit from truncating
or corrupting the file are two rules, and no heuristics:

- an edit is anchored: the text it replaces must occur exactly once (`replace_snippet`), or
  is the exact source span of one assignment's value (`set_hyperparameters`);
- the edited program must still parse and compile, or nothing is changed.

Line numbers are 1-based and count "\\n" line breaks, as `ast` does, so they agree with
`numbered()` and with the compiler's error messages.
"""

from __future__ import annotations

import ast
import difflib
import re
from dataclasses import dataclass

from . import pysource

__all__ = ["EditError", "EditResult", "numbered", "replace_snippet"]

DEFAULT_NAME = "train.py"


class EditError(Exception):
    """A refused edit or view. str(error) says what was wrong and what to do instead."""


@dataclass(frozen=True)
class EditResult:
    """The edited text; first_line..last_line is where the new text lies in it (1-based,
    inclusive; a deletion gives the line now at its place for both); diff is a unified diff
    of the whole file, 3 lines of context, labelled a/<name> and b/<name>."""

    text: str
    first_line: int
    last_line: int
    diff: str


# --- lines --------------------------------------------------------------------------------

def _lines(text: str) -> list[str]:
    """The file's lines without their line breaks ("\\r\\n" or "\\n"). Not str.splitlines,
    which also breaks at form feeds and other characters the compiler does not count."""
    if not text:
        return []
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _newline(text: str) -> str:
    """The file's line ending: "\\r\\n" when most of its lines end so, else "\\n"."""
    crlf = text.count("\r\n")
    return "\r\n" if crlf and 2 * crlf > text.count("\n") else "\n"


def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def _clip(line: str, width: int = 120) -> str:
    line = line.strip()
    return line if len(line) <= width else line[:width - 3] + "..."


def _span(first: int, last: int) -> str:
    return f"line {first}" if first >= last else f"lines {first}-{last}"


def _number_lines(lines: list[str], first: int, last: int, width: int) -> str:
    return "\n".join(f"{i:>{width}}\t{lines[i - 1]}" for i in range(first, last + 1))


def numbered(text: str, start: int = 1, end: int | None = None, max_lines: int = 400) -> str:
    """Lines start..end of the text (1-based, inclusive), each prefixed with its line number,
    right-aligned to the width of the last line's number, and a tab. start below 1 is read
    as 1; end past the file, or more than max_lines lines, is cut short. When the lines shown
    are not the whole file a final line says "(lines A-B of N)". A start past the last line,
    or an end before start, is refused with EditError."""
    lines = _lines(text)
    total = len(lines)
    if max_lines < 1:
        raise EditError(f"max_lines must be at least 1, not {max_lines}.")
    if total == 0:
        raise EditError("the file is empty: it has 0 lines.")
    start = max(1, start)
    if start > total:
        raise EditError(f"line {start} is past the end of the file, which has {total} lines; "
                        f"ask for a start between 1 and {total}.")
    if end is not None and end < start:
        raise EditError(f"end line {end} is before start line {start}; ask for end >= start.")
    last = total if end is None else min(end, total)
    last = min(last, start + max_lines - 1)
    shown = _number_lines(lines, start, last, len(str(total)))
    if start == 1 and last == total:
        return shown
    return f"{shown}\n(lines {start}-{last} of {total})"


def _diff(before: str, after: str, name: str) -> str:
    diff = difflib.unified_diff(_lines(before), _lines(after), f"a/{name}", f"b/{name}",
                                n=3, lineterm="")
    text = "\n".join(diff)
    return text + "\n" if text else ""


# --- the syntax check ---------------------------------------------------------------------

def _syntax_problem(source: str, name: str) -> SyntaxError | None:
    """Why the source would not parse or compile as a module, or None when it does."""
    try:
        pysource.compile_module(source, name)
    except SyntaxError as error:
        return error
    except (ValueError, RecursionError, MemoryError) as error:  # null bytes, deep nesting
        return SyntaxError(str(error) or type(error).__name__)
    return None


def _check_compiles(before: str, after: str, name: str, first: int, last: int) -> None:
    problem = _syntax_problem(after, name)
    if problem is None:
        return
    line = problem.lineno
    if line is None:
        where = "the file"
    else:
        lines = _lines(after)
        shown = f": `{_clip(lines[line - 1])}`" if 0 < line <= len(lines) else ""
        inside = ("inside your edit" if first <= line <= last else "outside your edit")
        where = f"line {line} ({inside}, {_span(first, last)}){shown}"
    message = (f"the edit was not applied because the result would not parse: {problem.msg} "
               f"at {where}. Fix the new text and try again; the file is unchanged.")
    earlier = _syntax_problem(before, name)
    if earlier is not None:
        message += (f" (The file did not parse before this edit either: {earlier.msg} at line "
                    f"{earlier.lineno}.)")
    raise EditError(message)


def _parse(text: str, what: str = "the file") -> ast.Module:
    try:
        return pysource.parse(text)
    except SyntaxError as error:
        raise EditError(f"{what} does not parse: {error.msg} at line {error.lineno}; fix that "
                        "first with a snippet replacement.") from None
    except (ValueError, RecursionError, MemoryError) as error:
        raise EditError(f"{what} does not parse: {error}.") from None


# --- replace_snippet ----------------------------------------------------------------------

def _occurrences(haystack: str, needle: str) -> list[int]:
    """Start of every occurrence, overlapping ones included (they make a snippet ambiguous)."""
    found, i = [], haystack.find(needle)
    while i != -1:
        found.append(i)
        i = haystack.find(needle, i + 1)
    return found


def _loose_text(text: str) -> tuple[str, list[int], list[int]]:
    """The text with trailing spaces and tabs removed from every line and "\\r\\n" read as
    "\\n", and for each of its characters the start and end of what it stands for in the
    original (a line break stands for the line's trailing whitespace and its break)."""
    chars: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    pos = 0
    size = len(text)
    for piece in text.split("\n"):
        line_end = pos + len(piece)  # where the "\n" is, or the end of the text
        content = piece[:-1] if piece.endswith("\r") and line_end < size else piece
        kept = content.rstrip(" \t")
        chars.append(kept)
        starts.extend(range(pos, pos + len(kept)))
        ends.extend(range(pos + 1, pos + len(kept) + 1))
        if line_end < size:
            chars.append("\n")
            starts.append(pos + len(kept))
            ends.append(line_end + 1)
        pos = line_end + 1
    return "".join(chars), starts, ends


def _loose_snippet(old: str) -> tuple[str, bool]:
    """The snippet read the same way; and whether its last line lost trailing whitespace
    (then a match must end where a line of the file ends)."""
    pieces = old.replace("\r\n", "\n").split("\n")
    last = pieces[-1]
    stripped_last = last.strip() != "" and last != last.rstrip(" \t\r")
    return "\n".join(p.rstrip(" \t\r") for p in pieces), stripped_last


def _ambiguous(text: str, spans: list[tuple[int, int]], loosely: bool) -> EditError:
    labels = []
    for start, end in spans:
        first, last = _line_of(text, start), _line_of(text, max(start, end - 1))
        labels.append(str(first) if first == last else f"{first}-{last}")
    shown = ", ".join(labels[:30]) + (f", and {len(labels) - 30} more" if len(labels) > 30 else "")
    how = " (ignoring trailing whitespace)" if loosely else ""
    return EditError(f"the snippet occurs {len(spans)} times{how} (lines {shown}); include more "
                     "surrounding lines so it is unique.")


_WORD = re.compile(r"\w+")


def _closest(lines: list[str], old: str) -> tuple[int, int, float, str] | None:
    """The window of the file's lines most like the snippet: (first, last, similarity, a note
    on the first line that differs), or None when there is nothing to compare."""
    want = old.replace("\r\n", "\n").split("\n")
    while want and not want[-1].strip():
        want.pop()
    while want and not want[0].strip():
        want.pop(0)
    if not want or not lines:
        return None
    size = min(len(want), len(lines))

    def squash(line: str) -> str:
        return " ".join(line.split())

    want_keys = [squash(line) for line in want]
    file_keys = [squash(line) for line in lines]
    windows = range(len(lines) - size + 1)
    # Candidates: the windows sharing the most whole lines with the snippet (indentation and
    # spacing ignored), and those sharing the most words; fast on any file. Then each
    # candidate is scored by its lines' character similarity, line against line, which stays
    # cheap where one similarity of two long texts would not.
    by_line = difflib.SequenceMatcher(None, autojunk=False)
    by_line.set_seq2(want_keys)
    line_scores = []
    for s in windows:
        by_line.set_seq1(file_keys[s:s + size])
        line_scores.append(by_line.ratio())
    words = set(_WORD.findall(" ".join(want_keys)))
    per_line = [len(set(_WORD.findall(key)) & words) for key in file_keys]
    word_scores = [sum(per_line[:size])]
    for s in windows[1:]:
        word_scores.append(word_scores[-1] - per_line[s - 1] + per_line[s + size - 1])
    candidates = set(sorted(windows, key=lambda s: (-line_scores[s], s))[:10])
    candidates |= set(sorted(windows, key=lambda s: (-word_scores[s], s))[:10])
    by_char = difflib.SequenceMatcher(None, autojunk=False)
    # And the windows that start where the snippet's first line fits best, or end where its
    # last line does: a snippet with every line a little wrong still finds its place.
    for edge, offset in ((want_keys[0], 0), (want_keys[-1], size - 1)):
        by_char.set_seq2(edge)
        fits = []
        for i, key in enumerate(file_keys):
            by_char.set_seq1(key)
            if by_char.real_quick_ratio() > 0.5 and by_char.quick_ratio() > 0.5:
                fits.append((by_char.ratio(), -i))
        for _, i in sorted(fits, reverse=True)[:5]:
            candidates.add(min(max(0, -i - offset), windows[-1]))
    shown = min(size, 60)

    def score(s: int) -> float:
        total = same = 0.0
        for mine, theirs in zip(file_keys[s:s + shown], want_keys[:shown]):
            by_char.set_seqs(mine, theirs)
            same += by_char.ratio() * (len(mine) + len(theirs))
            total += len(mine) + len(theirs)
        return max(line_scores[s], same / total if total else 1.0)

    ratio, s = max((score(s), -s) for s in candidates)
    s = -s
    first, last = s, s + size - 1
    if line_scores[s] > 0:
        # The snippet may lack some of the file's lines there, or have extra ones: of the
        # windows up to 3 lines longer or shorter, nearby, the one sharing the most lines
        # with it, then the closest in length, then the nearest.
        options = []
        for a in range(max(0, s - 3), min(len(lines) - 1, s + 3) + 1):
            for b in range(max(a, a + size - 4), min(len(lines), a + size + 3)):
                by_line.set_seq1(file_keys[a:b + 1])
                shared = sum(block.size for block in by_line.get_matching_blocks())
                options.append((-shared, abs(b + 1 - a - size), abs(a - s), a, b))
        _, _, _, first, last = min(options)
    # Lines at either edge that the snippet has nothing for are not shown.
    ops = _line_ops(file_keys, first, last, want_keys)
    if len(ops) > 1 and ops[0][0] == "delete":
        first += ops[0][2]
    if len(ops) > 1 and ops[-1][0] == "delete":
        last -= ops[-1][2] - ops[-1][1]
    ops = _line_ops(file_keys, first, last, want_keys)
    return first + 1, last + 1, ratio, _first_difference(lines, first, want, ops)


def _line_ops(keys: list[str], first: int, last: int, want: list[str]):
    return difflib.SequenceMatcher(None, keys[first:last + 1], want, autojunk=False).get_opcodes()


def _first_difference(lines: list[str], s: int, want: list[str], ops) -> str:
    """Where the file (lines from index s on) and the snippet first differ, in words."""
    for tag, i1, i2, j1, j2 in ops:
        if tag == "equal":
            for i, j in zip(range(i1, i2), range(j1, j2)):
                mine, theirs = lines[s + i].rstrip(), want[j].rstrip()
                if mine == theirs:
                    continue
                indent, wrong = len(mine) - len(mine.lstrip()), len(theirs) - len(theirs.lstrip())
                if indent != wrong:
                    return (f"; its line {s + i + 1} is indented by {indent} characters where "
                            f"the snippet's is by {wrong}")
                return (f"; its line {s + i + 1} reads `{_clip(mine)}` where the snippet has "
                        f"`{_clip(theirs)}` (spacing differs)")
            continue
        if tag == "replace":
            return (f"; its line {s + i1 + 1} reads `{_clip(lines[s + i1])}` where the snippet "
                    f"has `{_clip(want[j1])}`")
        if tag == "delete":
            return (f"; its line {s + i1 + 1} `{_clip(lines[s + i1])}` is missing from the "
                    "snippet")
        return f"; the snippet's line `{_clip(want[j1])}` is not in the file there"
    return ""


def _missing(text: str, old: str) -> EditError:
    base = ("the snippet was not found in the file, not even ignoring trailing whitespace and "
            "line endings")
    lines = _lines(text)
    found = _closest(lines, old)
    if found is None:
        return EditError(f"{base}; view the file with line numbers and copy the lines to change "
                         "exactly.")
    first, last, ratio, note = found
    if ratio < 0.4:
        return EditError(f"{base}, and nothing in the file is close to it (the nearest region, "
                         f"{_span(first, last)}, is {ratio:.0%} similar); view the file with line "
                         "numbers and copy the lines to change exactly.")
    shown_last = min(last, first + 79)
    block = _number_lines(lines, first, shown_last, len(str(len(lines))))
    more = f"\n(... to line {last})" if shown_last < last else ""
    return EditError(f"{base}. The closest region is {_span(first, last)} ({ratio:.0%} "
                     f"similar){note}; copy the text from it exactly, without the line numbers "
                     f"and tabs:\n{block}{more}")


def _locate(text: str, old: str) -> tuple[int, int]:
    """The one span of the text the snippet stands for, exactly or loosely."""
    hits = _occurrences(text, old)
    if len(hits) == 1:
        return hits[0], hits[0] + len(old)
    if hits:
        raise _ambiguous(text, [(h, h + len(old)) for h in hits], loosely=False)
    loose, starts, ends = _loose_text(text)
    needle, to_line_end = _loose_snippet(old)
    spans = []
    if needle.strip():
        for i in _occurrences(loose, needle):
            j = i + len(needle)
            if to_line_end and j < len(loose) and loose[j] != "\n":
                continue  # the snippet's trailing whitespace would have been inside a line
            spans.append((starts[i], ends[j - 1]))
    if len(spans) == 1:
        return spans[0]
    if spans:
        raise _ambiguous(text, spans, loosely=True)
    raise _missing(text, old)


def replace_snippet(text: str, old: str, new: str, name: str = DEFAULT_NAME) -> EditResult:
    """Replace the one occurrence of `old` in the text with `new`.

    `old` must occur exactly once. When it does not occur as given, it is looked for once
    more with exactly two differences tolerated: spaces and tabs at the end of any line
    (in the file or in the snippet), and "\\r\\n" versus "\\n" line breaks; a snippet whose
    last line had trailing whitespace must then also end where a line of the file ends.
    Nothing else is tolerated: indentation, spacing inside a line and every other character
    must be exact.

    `new` is written with the file's line ending. When the replaced text ended with a line
    break and `new` (not empty) does not, one is added; when the replaced text ended at the
    end of a line without taking its break and `new` ends with one, that break is dropped;
    so replacing whole lines never joins two lines or leaves a stray blank one.

    Refused with EditError, the text unchanged: `old` empty or only whitespace; `new` equal
    to `old` or making no change; `old` not found (the message shows the closest region of
    the file, numbered, to copy from); `old` found more than once (the message gives the
    lines of every occurrence); a result that does not parse and compile as Python (the
    message gives the line and the compiler's complaint)."""
    if not isinstance(old, str) or not isinstance(new, str):
        raise EditError("the snippet and its replacement must both be text.")
    if not old.strip():
        raise EditError("the snippet to replace is empty; give the exact lines to change, "
                        "copied from the file.")
    if old == new:
        raise EditError("no change: the replacement is identical to the snippet.")
    start, end = _locate(text, old)
    if text[start:end].endswith("\r") and text.startswith("\n", end):
        end += 1  # half a "\r\n" line break is the whole of it
    replaced = text[start:end]
    body = new.replace("\r\n", "\n")
    at_line_end = end == len(text) or text.startswith(("\n", "\r\n"), end)
    if body:
        if replaced.endswith("\n") and not body.endswith("\n"):
            body += "\n"
        elif not replaced.endswith("\n") and at_line_end and body.endswith("\n"):
            body = body[:-1]
    newline = _newline(text)
    if newline != "\n":
        body = body.replace("\n", newline)
    result = text[:start] + body + text[end:]
    if text.endswith("\n") and result and not result.endswith("\n"):
        result += newline
    if result == text:
        raise EditError("no change: the replacement leaves the file as it was.")
    first = _line_of(result, start)
    last = _line_of(result, start + len(body) - 1) if body else first
    _check_compiles(text, result, name, first, last)
    return EditResult(result, first, last, _diff(text, result, name))

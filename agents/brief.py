"""The first message of a proposal: the frontier's code, the results so far, the lane's
direction, and what earlier experiments taught -- at the level of detail the model's window
has room for.

Three levels:
- full: the whole editable file (what a large window gets, and what works best);
- outline: the file's hyperparameter lines as they stand and an outline of its functions and
  classes by line, fewer history rows; the model reads what it needs with read_file;
- minimal: the hyperparameter lines and the outline's names alone, a few history rows, no
  memories (the last resort of a very small window).

The brief starts with its stable part, the frontier's code, so that every proposal on the
same frontier begins with the same bytes after the same system prompt and tools: a
provider's prompt cache serves that prefix at a fraction of the price (Anthropic's through
the marker the client puts at `prefix`'s end, OpenAI's automatically)."""

from __future__ import annotations

import ast
import enum
from dataclasses import dataclass

from .hyperparams import hyperparameters
from .proposer import ProposalRequest
from .tools import history_table, improve

MAX_CODE_CHARS = 60_000  # the editable file is shown whole up to this size


class Detail(enum.IntEnum):
    FULL = 0
    OUTLINE = 1
    MINIMAL = 2


HISTORY_ROWS = {Detail.FULL: 30, Detail.OUTLINE: 12, Detail.MINIMAL: 5}
MEMORIES = {Detail.FULL: 5, Detail.OUTLINE: 3, Detail.MINIMAL: 0}


@dataclass(frozen=True)
class Brief:
    prefix: str  # the frontier's code: the same for every proposal on this frontier
    rest: str  # the results, the direction, the memories, the request
    detail: Detail

    @property
    def text(self) -> str:
        return self.prefix + self.rest


def history_rows(detail: Detail) -> tuple[int, ...]:
    """How many history rows a brief at `detail` may show, most first: a window that cannot hold
    them all loses the oldest rows first, down to the next level's count, before it loses code."""
    most = HISTORY_ROWS[detail]
    fewest = HISTORY_ROWS[Detail(detail + 1)] if detail < Detail.MINIMAL else most
    return tuple(dict.fromkeys((most, (most + fewest) // 2, fewest)))


def build(request: ProposalRequest, direction: str, memories: list[str], code: str, detail: Detail,
          rows: int | None = None) -> Brief:
    main = request.editable_files[0]
    metric = request.metric
    prefix = _code(main, code, detail)
    measured = (f"measures {metric.name} {request.frontier_val_bpb:.6f}" if request.frontier_val_bpb is not None
                else "is being measured now")
    parts = [
        f"The frontier {measured}.",
        f"Recent experiments, every lane's, oldest first (#number description | {metric.name} | status | "
        f"decision and gain in noise sigmas | steps, tok/s, peak memory; read_run #number for the curve, diff, log):\n"
        f"{history_table(request.history, HISTORY_ROWS[detail] if rows is None else rows, metric)}",
        f"Your research direction: {direction}",
    ]
    if request.plateau is not None:  # after the history, before the direction is acted on
        parts.insert(2, request.plateau.text())
    if request.constraints:
        parts.insert(1, "Constraints: a run past any of these is discarded, whatever its "
                        f"{metric.name}: " + "; ".join(c.text() for c in request.constraints) + ".")
    shown = memories[:MEMORIES[detail]]
    if shown:
        parts.append("What earlier experiments taught (memories):\n" + "\n".join(f"- {m}" for m in shown))
    parts.append(f"Make one change in your direction that you expect to {improve(metric)}, then submit it.")
    return Brief(prefix, "\n\n" + "\n\n".join(parts), detail)


def _code(main: str, code: str, detail: Detail) -> str:
    if detail is Detail.FULL:
        shown = code if len(code) <= MAX_CODE_CHARS else code[:MAX_CODE_CHARS] + \
            f"\n# ... (cut: {len(code)} characters in all; read the rest with read_file)"
        return f"The frontier's {main} (the best program so far):\n```python\n{shown}\n```"
    lines = code.splitlines()
    settings = hyperparameter_lines(code)
    text = (f"The frontier's {main} (the best program so far; {len(lines)} lines) in outline. Read any part "
            f"with read_file (a line range); set the hyperparameters below with set_hyperparameters.\n\n"
            f"Its hyperparameters, as numbered lines of the file:\n```python\n{settings}\n```")
    return text + f"\n\nIts functions and classes:\n{outline(code, names_only=detail is Detail.MINIMAL)}"


def hyperparameter_lines(code: str) -> str:
    """Every module-level setting's line, numbered as in the file."""
    lines = code.splitlines()
    try:
        found = hyperparameters(code)
    except Exception:  # noqa: BLE001 - a file that does not parse has no settings to show
        return "(the file does not parse)"
    width = len(str(len(lines)))
    return "\n".join(f"{h.line:>{width}}\t{lines[h.line - 1]}" for h in found.values()) or "(none)"


def outline(code: str, names_only: bool = False) -> str:
    """The file's top-level functions and classes (and a class's methods) with their lines."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return "(the file does not parse)"
    rows = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            kind = "class" if isinstance(node, ast.ClassDef) else "def"
            if names_only:
                rows.append(f"{kind} {node.name}")
                continue
            rows.append(f"{node.lineno}-{node.end_lineno}\t{kind} {node.name}")
            if isinstance(node, ast.ClassDef):
                rows += [f"{m.lineno}-{m.end_lineno}\t    def {m.name}" for m in node.body
                         if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if names_only:
        return ", ".join(rows) or "(none)"
    return "\n".join(rows) or "(none)"


def fits(tokens: int, window: int, output_cap: int) -> bool:
    """Whether a first request of `tokens` leaves room for the turns: at most half of what
    the window holds besides the reply."""
    return tokens <= (window - output_cap) // 2


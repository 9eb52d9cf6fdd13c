"""The research agent's tools for one proposal: what the model may look at and change.

Every tool returns text for the model. A tool that cannot do what was asked says why in
words the model can act on (the edit is refused, the file is left as it was); it never
raises into the worker loop. Edits are anchored and parse-checked (agents/editing.py), so a
model cannot truncate or corrupt the file it edits."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from results.evidence import RunEvidence
from results.metric import Direction, Metric

from .changes import normalized_change
from .editing import EditError, numbered, replace_snippet
from .hyperparams import hyperparameters, set_hyperparameters
from .llm import Tool
from .proposer import PastExperiment

MAX_RESULT_CHARS = 20_000  # a tool result longer than this is cut, with a note saying so
READ_ONLY = ("prepare.py",)  # the fixed harness: readable, never editable

_FILE = {"type": "string", "description": "path relative to the repository, e.g. the editable file"}

TOOLS = [
    Tool("read_file", "Read a file with line numbers (the editable file, or prepare.py read-only). "
                      "Give a line range to read part of a long file.",
         {"type": "object", "properties": {"path": _FILE, "start_line": {"type": "integer"},
                                           "end_line": {"type": "integer"}}, "required": ["path"]}),
    Tool("replace", "Replace an exact snippet of the editable file with new text. The snippet must occur "
                    "exactly once; copy it from read_file (without the line numbers), with enough lines "
                    "to be unique. The result must still be valid Python.",
         {"type": "object", "properties": {"path": _FILE, "old": {"type": "string"}, "new": {"type": "string"}},
          "required": ["old", "new"]}),
    Tool("set_hyperparameters", "Set module-level constants of the editable file by name, e.g. "
                                '{"values": {"MATRIX_LR": "0.03", "WINDOW_PATTERN": "\\"SSL\\""}} '
                                "(values are Python source).",
         {"type": "object", "properties": {"values": {"type": "object", "additionalProperties": {"type": "string"}}},
          "required": ["values"]}),
    Tool("query_history", "The experiments of this research line so far, every lane's: number, description, "
                          "the measured result, status, decision (with the gain in noise sigmas), steps, tok/s "
                          "and peak memory. Newest first; read_run tells the rest of one.",
         {"type": "object", "properties": {"limit": {"type": "integer"},
                                           "status": {"type": "string", "description": "only this status (ok, crash, ...)"},
                                           "contains": {"type": "string", "description": "description contains"}}}),
    Tool("read_run", "How one experiment's run went, by its number (#N in the history): steps, tokens, "
                     "tok/s, MFU, peak VRAM, the result against its parent and the start, the gain in noise "
                     "sigmas and the rule that judged it, its loss curve, its diff, and for a failed run the "
                     "end of its log.",
         {"type": "object", "properties": {"experiment_id": {"type": "integer"}}, "required": ["experiment_id"]}),
    Tool("recall", "Search the research memories (what earlier experiments taught) by keywords.",
         {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}),
    Tool("remember", "Write a short memory for later proposals (an insight, not a plan).",
         {"type": "object", "properties": {"text": {"type": "string"},
                                           "tags": {"type": "array", "items": {"type": "string"}}},
          "required": ["text"]}),
    Tool("submit", "Submit the current edit as this proposal's experiment; ends the proposal. "
                   "description: one line naming the change (e.g. 'MATRIX_LR 0.04 -> 0.03'); "
                   "hypothesis: why it should improve the result.",
         {"type": "object", "properties": {"description": {"type": "string"}, "hypothesis": {"type": "string"}},
          "required": ["description", "hypothesis"]}),
]


@dataclass
class Submission:
    description: str
    hypothesis: str
    change: str  # normalized change key


@dataclass
class Toolbox:
    """The tools bound to one proposal: a draft worktree at the parent commit."""

    worktree: Path
    editable: tuple[str, ...]
    history: tuple[PastExperiment, ...]
    tried: Callable[[str], str | None]  # change key -> where it was tried, or None
    recall_memories: Callable[[str], list[str]] = lambda query: []
    remember_memory: Callable[[str, list[str]], None] = lambda text, tags: None
    read_run: Callable[[int], RunEvidence | None] = lambda experiment_id: None
    originals: dict[str, str] = field(default_factory=dict)
    submission: Submission | None = None
    metric: Metric = field(default_factory=Metric)
    max_result_chars: int = MAX_RESULT_CHARS  # less for a small context window

    def __post_init__(self):
        for path in self.editable:
            self.originals[path] = (self.worktree / path).read_text()

    def run(self, name: str, arguments: dict | None) -> tuple[str, bool]:
        """(result text, whether it is an error)."""
        if arguments is None:
            return ("Your arguments were not a valid JSON object; call the tool again with a JSON object "
                    "matching its schema.", True)
        handler = getattr(self, f"_tool_{name}", None)
        if handler is None:
            return f"There is no tool named {name!r}; the tools are {', '.join(t.name for t in TOOLS)}.", True
        try:
            text = handler(**arguments)
        except EditError as e:
            return f"Refused, the file is unchanged: {e}", True
        except TypeError as e:  # missing or unexpected arguments
            return f"Bad arguments for {name}: {e}. See the tool's schema.", True
        if len(text) > self.max_result_chars:
            text = text[:self.max_result_chars] + f"\n... (cut at {self.max_result_chars} characters; ask for less)"
        return text, False

    # -- the files ------------------------------------------------------------------------------

    def _path(self, path: str | None, *, write: bool) -> str:
        path = str(path).strip() if path else self.editable[0]
        path = path[2:] if path.startswith("./") else path
        if path in self.editable:
            return path
        if not write and path in READ_ONLY and (self.worktree / path).is_file():
            return path
        allowed = ", ".join(self.editable) + ("" if write else f" (and {', '.join(READ_ONLY)} to read)")
        verb = "edit" if write else "read"
        raise EditError(f"you may {verb} only {allowed}, not {path}.")

    def _tool_read_file(self, path: str | None = None, start_line: int = 1, end_line: int | None = None) -> str:
        path = self._path(path, write=False)
        return numbered((self.worktree / path).read_text(), int(start_line or 1),
                        int(end_line) if end_line is not None else None)

    def _write(self, path: str, result) -> str:
        (self.worktree / path).write_text(result.text)
        return f"Done. Lines {result.first_line}-{result.last_line} of {path} now read:\n" + \
            numbered(result.text, max(1, result.first_line - 2), result.last_line + 2)

    def _tool_replace(self, old: str, new: str, path: str | None = None) -> str:
        path = self._path(path, write=True)
        return self._write(path, replace_snippet((self.worktree / path).read_text(), old, new, name=path))

    def _tool_set_hyperparameters(self, values: dict) -> str:
        if not isinstance(values, dict) or not values:
            raise EditError('give values as an object of NAME -> Python source, e.g. {"MATRIX_LR": "0.03"}.')
        path = self.editable[0]
        text = (self.worktree / path).read_text()
        result = set_hyperparameters(text, {str(k): str(v) for k, v in values.items()}, name=path)
        (self.worktree / path).write_text(result.text)
        after = hyperparameters(result.text)
        return "Done: " + ", ".join(f"{k} = {after[k].value_source}" for k in values if k in after)

    # -- memory and history -----------------------------------------------------------------------

    def _tool_query_history(self, limit: int = 20, status: str | None = None, contains: str | None = None) -> str:
        rows = [p for p in reversed(self.history)
                if (status is None or p.status == status) and (not contains or contains.lower() in p.description.lower())]
        rows = rows[:max(1, min(int(limit or 20), 200))]
        if not rows:
            return "No experiments match."
        return "\n".join(_history_line(p, self.metric) for p in rows)

    def _tool_read_run(self, experiment_id: int) -> str:
        try:
            number = int(str(experiment_id).lstrip("#"))
        except ValueError:
            raise EditError(f"experiment_id is a number (#N in the history), not {experiment_id!r}.") from None
        evidence = self.read_run(number)
        if evidence is None:
            raise EditError(f"there is no experiment #{number} in this research line.")
        return evidence.text()

    def _tool_recall(self, query: str) -> str:
        found = self.recall_memories(str(query))
        return "\n".join(f"- {m}" for m in found) if found else "No memory matches."

    def _tool_remember(self, text: str, tags: list | None = None) -> str:
        text = str(text).strip()
        if not text:
            raise EditError("the memory is empty.")
        self.remember_memory(text[:1000], [str(t) for t in (tags or [])][:8])
        return "Remembered."

    # -- the end ----------------------------------------------------------------------------------

    def _tool_submit(self, description: str, hypothesis: str = "") -> str:
        description = " ".join(str(description).split())[:200]
        if not description:
            raise EditError("give a one-line description of the change.")
        keys = []
        for path in self.editable:
            before, after = self.originals[path], (self.worktree / path).read_text()
            key = normalized_change(before, after) if before != after else ""
            if key:
                keys.append(f"{path}:\n{key}" if len(self.editable) > 1 else key)
        if not keys:
            raise EditError("you have not changed the program yet (or only its formatting or comments); "
                            "make a change with replace or set_hyperparameters, then submit.")
        change = "\n".join(keys)
        where = self.tried(change)
        if where is not None:
            raise EditError(f"this exact change was already tried ({where}); make a different change, then submit.")
        self.submission = Submission(description, " ".join(str(hypothesis).split())[:1000], change)
        return "Submitted."


def goal(metric: Metric) -> str:
    """What the experiments are judged by, in the prompts' words."""
    if metric == Metric():
        return "val_bpb (validation bits per byte; lower is better)"
    return f"{metric.name} ({metric.direction.value} is better)"


def short_goal(metric: Metric) -> str:
    return f"{metric.name}, {metric.direction.value} is better"


def improve(metric: Metric) -> str:
    """The verb a prompt asks for: lower val_bpb, raise accuracy."""
    return f"{'lower' if metric.direction is Direction.LOWER else 'raise'} {metric.name}"


def _history_line(p: PastExperiment, metric: Metric = Metric()) -> str:
    value = f"{p.val_bpb:.6f}" if p.val_bpb is not None else "-"
    decision = p.decision or "pending"
    if p.gain_sigma is not None:
        decision += f" {p.gain_sigma:+.1f}σ"
    run = ", ".join(part for part in (
        f"{p.steps} steps" if p.steps is not None else "",
        f"{p.tok_per_s / 1e3:,.0f}k tok/s" if p.tok_per_s else "",
        f"{p.peak_vram_mb / 1024:.1f} GB" if p.peak_vram_mb else "") if part)
    number = f"#{p.experiment_id} " if p.experiment_id is not None else ""
    return f"{number}{p.description} | {metric.name} {value} | {p.status} | {decision}" + (f" | {run}" if run else "")


def history_table(history: tuple[PastExperiment, ...], limit: int, metric: Metric = Metric()) -> str:
    rows = list(history)[-limit:]
    return "\n".join(_history_line(p, metric) for p in rows) if rows else "(none yet)"


def transcript_line(role: str, content: str, **more) -> str:
    return json.dumps({"role": role, "content": content, **more}, ensure_ascii=False)

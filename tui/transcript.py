"""An agent's transcript: the JSON-lines file an LLM proposal leaves (its path is in the
experiment's notes["transcript"]), one message per line with a role (system, user, assistant,
tool), its content, and for tool calls the tool's name and arguments."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text

NO_TRANSCRIPT = "no transcript (offline mutator)"
ROLE_STYLES = {"system": "bold magenta", "user": "bold blue", "assistant": "bold green", "tool": "bold yellow"}
CONTENT_CHARS = 4000  # a tool's output can be a whole file; the rest is in the transcript file


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    tool: str | None = None
    arguments: object = None


def load(path: str | Path) -> list[Message]:
    messages = []
    for number, line in enumerate(Path(path).read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            if not isinstance(item, dict):
                raise ValueError("not an object")
            messages.append(Message(str(item.get("role", "?")), str(item.get("content") or ""),
                                    item.get("tool"), item.get("arguments")))
        except ValueError as e:
            messages.append(Message("unreadable", f"line {number}: {e}"))
    return messages


def render(notes: dict) -> Text:
    """The transcript an LLM proposer noted with its proposal (Experiment.notes)."""
    path = notes.get("transcript")
    if not path:
        return Text(NO_TRANSCRIPT, style="dim")
    try:
        messages = load(path)
    except OSError as e:
        return Text(f"the transcript {path} cannot be read: {e.strerror or e}", style="red")
    out = Text()
    for m in messages:
        out.append(m.role, style=ROLE_STYLES.get(m.role, "bold red"))
        if m.tool:
            out.append(f" {m.tool}", style="bold")
        if m.arguments not in (None, "", {}):
            args = m.arguments if isinstance(m.arguments, str) else json.dumps(m.arguments, ensure_ascii=False)
            out.append(f" {args}", style="cyan")
        out.append("\n")
        content = m.content if len(m.content) <= CONTENT_CHARS else (
            m.content[:CONTENT_CHARS] + f"\n… ({len(m.content) - CONTENT_CHARS} more characters)")
        out.append(content + "\n\n")
    return out if messages else Text(f"the transcript {path} is empty", style="dim")

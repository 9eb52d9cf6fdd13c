"""One lane's research agent making one proposal: a fresh, bounded context, then a loop of
model turns and tool calls that ends when the model submits an edit.

The context is rebuilt from the store for every proposal (the task and its rules, the
frontier's code and val_bpb, every lane's recent results, the lane's research direction,
relevant memories), so a long night never grows a conversation past the model's window.
The loop has a turn limit, nudges a model that stops calling tools, and hands every tool
error back to the model as a tool result. The conversation is written, as JSON lines, to a
transcript file for the TUI's detail view."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

from .llm import CallInfo, Client, Message
from .proposer import Proposal, ProposalError, ProposalRequest
from .tools import TOOLS, Toolbox, goal, history_table, improve, transcript_line

MAX_TURNS = 16  # model replies per proposal
MAX_NUDGES = 2  # replies in a row with no tool call before giving up
MAX_CODE_CHARS = 60_000  # the editable file is shown whole up to this size
HISTORY_ROWS = 30

SYSTEM = """\
You are a research engineer improving a small GPT training program. Each experiment trains \
for a fixed wall-clock budget, then measures {goal}. The harness, not you, runs the \
experiment and decides whether to keep it.

Rules:
- Change only the editable file ({editable}). prepare.py (data, tokenizer, evaluation) is \
fixed: you may read it, never change it.
- Make one focused change per proposal, with a clear hypothesis, so its effect can be read.
- The budget is wall-clock time: a change that makes each step slower must earn it back.
- Simpler is better at equal {metric}: removing code for the same result is a win.
- Do not repeat an experiment that was already tried (the history lists them).
- Use the tools to read and edit; when the edit is made, call submit with a one-line \
description and your hypothesis. Your proposal ends there."""

NUDGE = ("Please continue with a tool call: read or edit the file, and call submit with a description "
         "and hypothesis once your change is made.")


@dataclass(frozen=True)
class Context:
    """What the engine knows that the prompt needs, beyond the request."""

    direction: str
    memories: list[str]


class Worker:
    def __init__(self, client: Client, *, tried: Callable[[str], str | None],
                 recall: Callable[[str], list[str]], remember: Callable[[int, str, list[str]], None],
                 transcripts: Path | None, max_turns: int = MAX_TURNS):
        self.client = client
        self.tried = tried
        self.recall = recall
        self.remember = remember
        self.transcripts = transcripts
        self.max_turns = max_turns

    async def propose(self, request: ProposalRequest, context: Context) -> Proposal:
        box = Toolbox(request.worktree, request.editable_files, request.history, self.tried,
                      recall_memories=self.recall,
                      remember_memory=lambda text, tags: self.remember(request.lane, text, tags),
                      metric=request.metric)
        system = SYSTEM.format(editable=", ".join(request.editable_files), goal=goal(request.metric),
                               metric=request.metric.name)
        first = self._brief(request, context, box)
        messages = [Message("user", first)]
        transcript = [transcript_line("system", system), transcript_line("user", first)]
        path = self._transcript_path(request)
        info = CallInfo("worker", request.lane)
        nudges = 0
        try:
            for _ in range(self.max_turns):
                reply = await self.client.complete(system, messages, TOOLS, info)
                messages.append(Message("assistant", reply.text, reply.tool_calls))
                if reply.text or not reply.tool_calls:
                    transcript.append(transcript_line("assistant", reply.text))
                transcript.extend(transcript_line("assistant", "", tool=c.name, arguments=c.raw) for c in reply.tool_calls)
                if not reply.tool_calls:
                    nudges += 1
                    if nudges > MAX_NUDGES:
                        raise ProposalError(f"the model stopped calling tools ({nudges} replies without one)")
                    note = NUDGE if not reply.truncated else "Your reply was cut off at the output limit. " + NUDGE
                    messages.append(Message("user", note))
                    transcript.append(transcript_line("user", note))
                    continue
                nudges = 0
                for call in reply.tool_calls:
                    result, is_error = box.run(call.name, call.arguments)
                    if reply.truncated and call.arguments is None:
                        result += " (your reply was cut off at the output limit; send a shorter edit)"
                    messages.append(Message("tool", result, tool_call_id=call.id, is_error=is_error))
                    transcript.append(transcript_line("tool", result, tool=call.name, error=is_error))
                    if box.submission is not None:
                        break
                if box.submission is not None:
                    break
            else:
                raise ProposalError(f"no submission after {self.max_turns} model turns")
        finally:
            self._write_transcript(path, transcript)
        sub = box.submission
        return Proposal(description=sub.description, hypothesis=sub.hypothesis, change=sub.change,
                        agent=self.client.name,
                        extra={"transcript": str(path) if path else None, "direction": context.direction})

    def _brief(self, request: ProposalRequest, context: Context, box: Toolbox) -> str:
        main = request.editable_files[0]
        code = box.originals[main]
        shown = code if len(code) <= MAX_CODE_CHARS else code[:MAX_CODE_CHARS] + \
            f"\n# ... (cut: {len(code)} characters in all; read the rest with read_file)"
        metric = request.metric
        measured = (f"measures {metric.name} {request.frontier_val_bpb:.6f}" if request.frontier_val_bpb is not None
                    else "is being measured now")
        parts = [
            f"Your research direction: {context.direction}",
            f"The frontier (the best program so far) {measured}. Its {main}:",
            f"```python\n{shown}\n```",
            f"Recent experiments, every lane's, oldest first (description | {metric.name} | status | decision):\n"
            f"{history_table(request.history, HISTORY_ROWS, metric)}",
        ]
        if context.memories:
            parts.append("What earlier experiments taught (memories):\n" + "\n".join(f"- {m}" for m in context.memories))
        parts.append(f"Make one change in your direction that you expect to {improve(metric)}, then submit it.")
        return "\n\n".join(parts)

    def _transcript_path(self, request: ProposalRequest) -> Path | None:
        if self.transcripts is None:
            return None
        stamp = datetime.now().strftime("%Y%m%dT%H%M%S%f")
        return self.transcripts / f"lane{request.lane}-{stamp}-{request.attempt:04d}.jsonl"

    @staticmethod
    def _write_transcript(path: Path | None, lines: list[str]) -> None:
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")

"""One lane's research agent making one proposal: a fresh, bounded context, then a loop of
model turns and tool calls that ends when the model submits an edit.

The context is rebuilt from the store for every proposal (the task and its rules, the
frontier's code and val_bpb, every lane's recent results, the lane's research direction,
relevant memories), so a long night never grows a conversation past the model's window.
The brief is as detailed as the window has room for (agents/brief.py); as the turns add up,
the oldest tool results give way, and a server that still refuses the prompt as too long gets
a shorter one rather than costing the lane its proposal.
The loop has a turn limit, nudges a model that stops calling tools (and says so in the log,
with the first words of what it said instead), and hands every tool error back to the model
as a tool result. The conversation is written, as JSON lines, to a transcript file for the
TUI's detail view."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

from results.evidence import RunEvidence

from . import brief as briefs
from .brief import Brief, Detail
from .llm import CallInfo, Client, ContextExceeded, Message
from .proposer import Proposal, ProposalError, ProposalRequest
from .tools import MAX_RESULT_CHARS, TOOLS, Toolbox, goal, transcript_line

log = logging.getLogger("autoresearch.agents")

MAX_TURNS = 16  # model replies per proposal
MAX_NUDGES = 2  # replies in a row with no tool call before giving up
MAX_REFUSALS = 3  # "prompt too long" answers one proposal survives, each met with a shorter prompt
KEEP_RESULTS = 2  # the latest tool results are never cut to fit
CUT = "(an earlier tool result, removed to fit the model's context window; call the tool again if you need it)"

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
- Read how earlier runs went (read_run: loss curve, throughput, memory, the diff, a crash's log) \
before you choose; a change that slowed training or ran out of memory tells you as much as a win.
- Use the tools to read and edit; when the edit is made, call submit with a one-line \
description and your hypothesis. Your proposal ends there."""

NUDGE = ("Please continue with a tool call: read or edit the file, and call submit with a description "
         "and hypothesis once your change is made.")


class ToolCallsMissing(ProposalError):
    """The model kept answering in prose: no tool call in MAX_NUDGES + 1 replies in a row."""


@dataclass(frozen=True)
class Context:
    """What the engine knows that the prompt needs, beyond the request."""

    direction: str
    memories: list[str]


class Worker:
    def __init__(self, client: Client, *, tried: Callable[[str], str | None],
                 recall: Callable[[str], list[str]], remember: Callable[[int, str, list[str]], None],
                 transcripts: Path | None, max_turns: int = MAX_TURNS,
                 read_run: Callable[[int], RunEvidence | None] = lambda experiment_id: None):
        self.client = client
        self.read_run = read_run
        self.tried = tried
        self.recall = recall
        self.remember = remember
        self.transcripts = transcripts
        self.max_turns = max_turns
        self.tool_replies = 0  # replies with at least one tool call, over this worker's proposals

    async def propose(self, request: ProposalRequest, context: Context) -> Proposal:
        window = self.client.window().tokens
        cap = self.client.output_cap
        # A tool result may take at most a quarter of the room the window leaves for the prompt.
        result_chars = min(MAX_RESULT_CHARS, int((window - cap) // 4 * self.client.gauge.chars_per_token))
        box = Toolbox(request.worktree, request.editable_files, request.history, self.tried,
                      recall_memories=self.recall,
                      remember_memory=lambda text, tags: self.remember(request.lane, text, tags),
                      read_run=self.read_run,
                      metric=request.metric, max_result_chars=max(2000, result_chars))
        system = SYSTEM.format(editable=", ".join(request.editable_files), goal=goal(request.metric),
                               metric=request.metric.name)
        brief = self._brief(request, context, box, system)
        messages = [Message("user", brief.text, cache_prefix=len(brief.prefix))]
        transcript = [transcript_line("system", system), transcript_line("user", brief.text)]
        path = self._transcript_path(request)
        info = CallInfo("worker", request.lane)
        nudges = refusals = 0
        try:
            for _ in range(self.max_turns):
                self._fit(system, messages)
                try:
                    reply = await self.client.complete(system, messages, TOOLS, info)
                except ContextExceeded as e:
                    refusals += 1
                    shorter = self._shorten(request, context, box, system, messages, brief) \
                        if refusals <= MAX_REFUSALS else None
                    if shorter is None:
                        raise ProposalError(f"the prompt does not fit the model's context window even cut down "
                                            f"({e})") from None
                    brief = shorter
                    log.info("lane %s: the server found the prompt too long; trying a shorter one", request.lane)
                    transcript.append(transcript_line("user", messages[0].content, note="shortened to fit"))
                    continue
                messages.append(Message("assistant", reply.text, reply.tool_calls))
                if reply.text or not reply.tool_calls:
                    transcript.append(transcript_line("assistant", reply.text))
                transcript.extend(transcript_line("assistant", "", tool=c.name, arguments=c.raw) for c in reply.tool_calls)
                if not reply.tool_calls:
                    nudges += 1
                    said = " ".join(reply.text.split())
                    log.warning("lane %s: %s answered without calling a tool (%d in a row): %s", request.lane,
                                self.client.name, nudges,
                                repr(said[:120] + ("..." if len(said) > 120 else "")) if said else "an empty reply")
                    if nudges > MAX_NUDGES:
                        raise ToolCallsMissing(f"the model answers without calling tools ({nudges} replies in a "
                                               f"row, the last began {said[:60]!r}); it needs a model that can "
                                               f"call tools")
                    note = NUDGE if not reply.truncated else "Your reply was cut off at the output limit. " + NUDGE
                    messages.append(Message("user", note))
                    transcript.append(transcript_line("user", note))
                    continue
                nudges = 0
                self.tool_replies += 1
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

    def _brief(self, request: ProposalRequest, context: Context, box: Toolbox, system: str,
               least: Detail = Detail.FULL) -> Brief:
        """The most detailed brief, at `least` or shorter, that leaves room for the turns."""
        code = box.originals[request.editable_files[0]]
        window, cap = self.client.window().tokens, self.client.output_cap
        # most detail first; within a level the oldest history rows go before the code view does
        sizes = [(detail, rows) for detail in Detail if detail >= least for rows in briefs.history_rows(detail)]
        for detail, rows in sizes:
            brief = briefs.build(request, context.direction, context.memories, code, detail, rows)
            if briefs.fits(self.client.prompt_tokens(system, [Message("user", brief.text)], TOOLS), window, cap):
                break
        if brief.detail is not Detail.FULL and least is Detail.FULL:
            log.info("lane %s: the brief shows the file %s, to fit a window of %d tokens", request.lane,
                     "in outline" if brief.detail is Detail.OUTLINE else "as its settings and names only",
                     window)
        return brief

    def _fit(self, system: str, messages: list[Message]) -> None:
        """Cut the oldest tool results (never the latest few) while the conversation would
        take more than the window leaves besides the reply."""
        room = self.client.window().tokens - self.client.output_cap
        results = [i for i, m in enumerate(messages) if m.role == "tool" and m.content != CUT]
        for i in results[:-KEEP_RESULTS] if len(results) > KEEP_RESULTS else ():
            if self.client.prompt_tokens(system, messages, TOOLS) <= room:
                return
            messages[i].content = CUT

    def _shorten(self, request: ProposalRequest, context: Context, box: Toolbox, system: str,
                 messages: list[Message], brief: Brief) -> Brief | None:
        """After a refusal for length: cut the tool results but the latest if there are
        older ones, else start again from a shorter brief (the file's edits so far stay).
        None when nothing is left to shorten. The client has learnt from the refusal (the
        window, the characters per token), so the new brief is sized to the truth."""
        results = [i for i, m in enumerate(messages) if m.role == "tool" and m.content != CUT]
        if len(results) > 1:
            for i in results[:-1]:
                messages[i].content = CUT
            return brief
        if brief.detail is Detail.MINIMAL:
            return None
        shorter = self._brief(request, context, box, system, least=Detail(brief.detail + 1))
        del messages[1:]
        messages[0] = Message("user", shorter.text, cache_prefix=len(shorter.prefix))
        return shorter

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

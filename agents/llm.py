"""LLM providers behind one small async interface: a conversation with tools goes in, a reply
with text and tool calls comes out, and every HTTP attempt is reported for accounting.

Two clients, over the real SDKs: Anthropic's Messages API and OpenAI's chat completions (and
every server that speaks it: vLLM, Ollama, llama.cpp, Gemini's compatibility endpoint, via
`--base-url` or the SDK's own OPENAI_BASE_URL). Keys are read by the SDKs from the
environment and never pass through this module's data.

Retrying is ours, not the SDKs' (they retry twice in ~1.5 s, which does not ride out a
per-minute rate limit): a call keeps trying through 429s (honouring Retry-After), 5xx,
timeouts and dropped connections until its retry budget -- minutes -- is spent. Each lane's
call waits on its own, so a throttled lane never holds up another; a per-provider cap bounds
how many requests are in flight at once, and a waiting call does not hold a slot."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from results.records import LlmCall

from .prices import cost_usd

DEFAULT_MAX_TOKENS = 4096
REQUEST_TIMEOUT_S = 180.0
RETRY_BUDGET_S = 900.0  # a call gives up after this long of failed attempts
MAX_WAIT_S = 120.0  # one wait between attempts, whatever Retry-After says
_RETRY_STATUSES = {408, 409, 429, 500, 502, 503, 504, 529}


class LlmError(Exception):
    """A call failed for good (its retry budget is spent, or the request itself is wrong)."""

    def __init__(self, message: str, *, transient: bool):
        super().__init__(message)
        self.transient = transient  # worth asking again later (throttling, an outage)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict  # JSON schema of the arguments object


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict | None  # None when the model's arguments are not a JSON object
    raw: str  # the arguments as the model sent them


@dataclass(frozen=True)
class Reply:
    text: str
    tool_calls: tuple[ToolCall, ...]
    input_tokens: int | None
    output_tokens: int | None
    truncated: bool = False  # the model hit the output limit mid-reply


@dataclass
class Message:
    """One turn of a conversation in a provider-neutral form."""

    role: str  # user | assistant | tool
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None  # role "tool": the call this answers
    is_error: bool = False


@dataclass(frozen=True)
class CallInfo:
    """Who is asking, for the llm_calls row."""

    role: str  # worker | orchestrator | memory
    lane: int | None = None
    experiment_id: int | None = None


@dataclass
class Client:
    """One provider and model. `report` receives an LlmCall per HTTP attempt (on the event
    loop's thread); `run_id` is filled in by whoever attaches the client to a session."""

    provider: str
    model: str
    base_url: str | None = None
    max_concurrent: int = 8
    retry_budget_s: float = RETRY_BUDGET_S
    request_timeout_s: float = REQUEST_TIMEOUT_S
    max_tokens: int = DEFAULT_MAX_TOKENS
    report: Callable[[LlmCall], None] = lambda call: None
    run_id: str = ""
    _sdk: object = field(default=None, repr=False)
    _slots: asyncio.Semaphore | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"{self.provider}:{self.model}"

    def _client(self):
        if self._sdk is None:
            self._sdk = _make_sdk(self.provider, self.base_url, self.request_timeout_s)
        return self._sdk

    async def complete(self, system: str, messages: list[Message], tools: list[Tool], info: CallInfo) -> Reply:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrent)
        deadline = time.monotonic() + self.retry_budget_s
        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            try:
                async with self._slots:
                    started = time.monotonic()
                    reply = await self._request(system, messages, tools)
            except Exception as e:  # noqa: BLE001 - sorted below; anything unknown is not retried
                outcome, wait, transient = _classify(e, attempt)
                self._record(info, outcome, started, error=_describe(e))
                if not transient:
                    raise LlmError(f"{self.name}: {_describe(e)}", transient=False) from None
                if time.monotonic() + wait > deadline:
                    raise LlmError(f"{self.name}: gave up after {attempt} attempt(s) in "
                                   f"{self.retry_budget_s:.0f} s; last: {_describe(e)}", transient=True) from None
                await asyncio.sleep(wait)
                continue
            self._record(info, "ok", started, reply.input_tokens, reply.output_tokens)
            return reply

    def _record(self, info: CallInfo, outcome: str, started: float, input_tokens: int | None = None,
                output_tokens: int | None = None, error: str | None = None) -> None:
        self.report(LlmCall(t=datetime.now(timezone.utc).replace(tzinfo=None), run_id=self.run_id, role=info.role,
                            provider=self.provider, model=self.model, outcome=outcome, lane=info.lane,
                            experiment_id=info.experiment_id, input_tokens=input_tokens, output_tokens=output_tokens,
                            cost_usd=cost_usd(self.model, input_tokens, output_tokens),
                            latency_ms=(time.monotonic() - started) * 1000, error=error))

    async def _request(self, system: str, messages: list[Message], tools: list[Tool]) -> Reply:
        if self.provider == "anthropic":
            return await _anthropic_request(self._client(), self.model, self.max_tokens, system, messages, tools)
        return await _openai_request(self._client(), self.model, self.max_tokens, system, messages, tools)


def _make_sdk(provider: str, base_url: str | None, timeout: float):
    # max_retries=0: the retry loop above owns waiting, so one lane's backoff is visible in
    # the accounting and bounded by its budget.
    if provider == "anthropic":
        import anthropic

        return anthropic.AsyncAnthropic(base_url=base_url, max_retries=0, timeout=timeout)
    import openai

    # A local server (vLLM, Ollama, llama.cpp) usually wants no key, but the SDK insists on one.
    unused = {"api_key": "unused"} if base_url and not os.environ.get("OPENAI_API_KEY") else {}
    return openai.AsyncOpenAI(base_url=base_url, max_retries=0, timeout=timeout, **unused)


def _classify(error: Exception, attempt: int) -> tuple[str, float, bool]:
    """(outcome for the row, seconds to wait, whether to try again)."""
    backoff = min(MAX_WAIT_S, 2.0 * 2 ** (attempt - 1)) * random.uniform(0.75, 1.0)
    status = getattr(error, "status_code", None)
    name = type(error).__name__
    if status == 429:
        retry_after = _retry_after(error)
        return "rate_limited", min(MAX_WAIT_S, retry_after) if retry_after is not None else backoff, True
    if "Timeout" in name:
        return "timeout", backoff, True
    if status in _RETRY_STATUSES or (status is not None and status >= 500) or "Connection" in name:
        return "error", backoff, True
    return "error", 0.0, False


def _retry_after(error: Exception) -> float | None:
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None) or {}
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return max(0.0, float(value) / scale)
            except ValueError:
                continue  # an HTTP date: rare for APIs; fall back to backoff
    return None


def _describe(error: Exception) -> str:
    status = getattr(error, "status_code", None)
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    text = f"HTTP {status}: {message}" if status else f"{type(error).__name__}: {message}"
    return text if len(text) <= 300 else text[:297] + "..."


def _parse_arguments(raw) -> tuple[dict | None, str]:
    if isinstance(raw, dict):
        return raw, json.dumps(raw)
    if not isinstance(raw, str):
        return None, json.dumps(raw)
    try:
        value = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError:
        return None, raw
    return (value if isinstance(value, dict) else None), raw


# -- OpenAI chat completions --------------------------------------------------------------------

async def _openai_request(sdk, model, max_tokens, system, messages, tools) -> Reply:
    wire = [{"role": "system", "content": system}]
    for m in messages:
        if m.role == "assistant":
            entry = {"role": "assistant", "content": m.content or None}
            if m.tool_calls:
                entry["tool_calls"] = [{"id": c.id, "type": "function",
                                        "function": {"name": c.name, "arguments": c.raw}} for c in m.tool_calls]
            wire.append(entry)
        elif m.role == "tool":
            wire.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content})
        else:
            wire.append({"role": "user", "content": m.content})
    extra = {"tools": [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                         "parameters": t.parameters}} for t in tools]} if tools else {}
    response = await sdk.chat.completions.create(model=model, messages=wire, max_tokens=max_tokens, **extra)
    if not response.choices:
        return Reply("", (), _usage(response, "prompt_tokens"), _usage(response, "completion_tokens"))
    choice = response.choices[0]
    calls = []
    for i, call in enumerate(choice.message.tool_calls or ()):
        function = getattr(call, "function", None)
        arguments, raw = _parse_arguments(getattr(function, "arguments", None))
        calls.append(ToolCall(call.id or f"call_{i}", getattr(function, "name", "") or "", arguments, raw))
    return Reply(choice.message.content or "", tuple(calls), _usage(response, "prompt_tokens"),
                 _usage(response, "completion_tokens"), truncated=choice.finish_reason == "length")


def _usage(response, name: str) -> int | None:
    usage = getattr(response, "usage", None)
    return getattr(usage, name, None) if usage is not None else None


# -- Anthropic messages ---------------------------------------------------------------------------

async def _anthropic_request(sdk, model, max_tokens, system, messages, tools) -> Reply:
    wire: list[dict] = []
    for m in messages:
        if m.role == "assistant":
            blocks = [{"type": "text", "text": m.content}] if m.content else []
            blocks += [{"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments or {}}
                       for c in m.tool_calls]
            wire.append({"role": "assistant", "content": blocks or [{"type": "text", "text": "(no reply)"}]})
            continue
        block = ({"type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.content, "is_error": m.is_error}
                 if m.role == "tool" else {"type": "text", "text": m.content})
        if wire and wire[-1]["role"] == "user":  # tool results and a nudge share one user turn
            wire[-1]["content"].append(block)
        else:
            wire.append({"role": "user", "content": [block]})
    extra = {"tools": [{"name": t.name, "description": t.description, "input_schema": t.parameters}
                       for t in tools]} if tools else {}
    response = await sdk.messages.create(model=model, system=system, messages=wire, max_tokens=max_tokens, **extra)
    texts, calls = [], []
    for i, block in enumerate(response.content or ()):
        if block.type == "text":
            texts.append(block.text)
        elif block.type == "tool_use":
            arguments, raw = _parse_arguments(block.input)
            calls.append(ToolCall(block.id or f"toolu_{i}", block.name, arguments, raw))
    usage = response.usage
    return Reply("\n".join(texts), tuple(calls), getattr(usage, "input_tokens", None),
                 getattr(usage, "output_tokens", None), truncated=response.stop_reason == "max_tokens")

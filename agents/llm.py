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
how many requests are in flight at once, and a waiting call does not hold a slot.

A client knows its model's context window (agents/window.py) and turns a server's "prompt too
long" into ContextExceeded, which the worker answers with a shorter prompt. It marks the
stable start of a conversation for Anthropic's prompt caching (OpenAI's is automatic for a
byte-identical prefix), records cached tokens, and asks the session's purse before each
call when there is a spending limit."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from results.records import LlmCall

from .prices import Tokens, cost_usd
from .spending import Purse, SpendingLimitReached
from .window import TokenGauge, Window, discover, exceeded

log = logging.getLogger("autoresearch.agents")

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


class ContextExceeded(LlmError):
    """The server refused the prompt as longer than the model's window."""

    def __init__(self, message: str, *, tokens: int | None, limit: int | None):
        super().__init__(message, transient=False)
        self.tokens = tokens  # what the prompt came to, by the server's count, when it said
        self.limit = limit  # the window, when it said


class BudgetSpent(LlmError):
    """The session's spending limit leaves no room for this call; it was not made."""

    def __init__(self, message: str):
        super().__init__(message, transient=False)


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
    cache_read_tokens: int | None = None  # of input_tokens, read from the provider's prompt cache
    cache_write_tokens: int | None = None  # of input_tokens, written to it


@dataclass
class Message:
    """One turn of a conversation in a provider-neutral form."""

    role: str  # user | assistant | tool
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None  # role "tool": the call this answers
    is_error: bool = False
    cache_prefix: int = 0  # the first this-many characters are the stable part worth caching


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
    max_tokens: int | None = None  # the output cap; None: from the window (a quarter, at most 4096)
    context_tokens: int | None = None  # the window as configured (--context-tokens); None: ask
    purse: Purse | None = None  # the session's spending limit, shared by its clients
    api_key: str | None = field(default=None, repr=False)  # None: the SDK reads its variable
    report: Callable[[LlmCall], None] = lambda call: None
    run_id: str = ""
    gauge: TokenGauge = field(default_factory=TokenGauge, repr=False)
    _window: Window | None = field(default=None, repr=False)
    _sdk: object = field(default=None, repr=False)
    _slots: asyncio.Semaphore | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"{self.provider}:{self.model}"

    def window(self) -> Window:
        """The model's context window in tokens (asks the server once; see agents/window.py)."""
        if self._window is None:
            self._window = discover(self.provider, self.model, self.base_url, self.context_tokens, self.api_key)
            log.info("%s: a context window of %d tokens (%s)", self.name, self._window.tokens, self._window.source)
        return self._window

    @property
    def output_cap(self) -> int:
        # A sixteenth of the window, at least 512: a tool call's edit fits easily (a 30-line
        # replace is ~400 tokens), and a small local model that rambles instead stops sooner
        # (on a CPU, 512 tokens can already take minutes).
        return self.max_tokens or max(512, min(DEFAULT_MAX_TOKENS, self.window().tokens // 16))

    def prompt_tokens(self, system: str, messages: list[Message], tools: list[Tool]) -> int:
        """The request's prompt as tokens, estimated from its characters."""
        return self.gauge.tokens(_prompt_chars(system, messages, tools))

    def _client(self):
        if self._sdk is None:
            self._sdk = _make_sdk(self.provider, self.base_url, self.request_timeout_s, self.api_key)
        return self._sdk

    async def complete(self, system: str, messages: list[Message], tools: list[Tool], info: CallInfo) -> Reply:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrent)
        deadline = time.monotonic() + self.retry_budget_s
        chars = _prompt_chars(system, messages, tools)
        cap = self.output_cap
        attempt = 0
        while True:
            attempt += 1
            held = self._ask_purse(chars, cap)
            try:
                reply = await self._attempt(system, messages, tools, cap, info)
            finally:
                if self.purse is not None:  # charged by _record once answered; cancelled or not
                    self.purse.release(held)
            if isinstance(reply, Reply):
                self.gauge.observe(chars, reply.input_tokens)
                return reply
            error, started = reply
            outcome, wait, transient = _classify(error, attempt)
            self._record(info, outcome, started, error=_describe(error))
            too_long = exceeded(str(error)) if not transient else None
            if too_long is not None:
                if too_long.tokens:
                    self.gauge.observe(chars, too_long.tokens)
                if too_long.limit and too_long.limit < self.window().tokens:
                    self._window = Window(too_long.limit, "the server's refusal of a longer prompt")
                raise ContextExceeded(f"{self.name}: {_describe(error)}", tokens=too_long.tokens,
                                      limit=too_long.limit) from None
            if not transient:
                raise LlmError(f"{self.name}: {_describe(error)}", transient=False) from None
            if time.monotonic() + wait > deadline:
                raise LlmError(f"{self.name}: gave up after {attempt} attempt(s) in "
                               f"{self.retry_budget_s:.0f} s; last: {_describe(error)}", transient=True) from None
            await asyncio.sleep(wait)

    async def _attempt(self, system: str, messages: list[Message], tools: list[Tool], cap: int,
                       info: CallInfo) -> Reply | tuple[Exception, float]:
        """One HTTP attempt: the reply (recorded), or the exception and when it started."""
        started = time.monotonic()
        try:
            async with self._slots:
                started = time.monotonic()
                reply = await self._request(system, messages, tools, cap)
        except Exception as e:  # noqa: BLE001 - sorted by the caller; anything unknown is not retried
            return e, started
        self._record(info, "ok", started, reply)
        return reply

    def _ask_purse(self, chars: int, cap: int) -> float:
        """Hold the call's estimated cost in the purse (released when it is answered), or raise
        BudgetSpent. Calls in flight at once on every lane are held together."""
        if self.purse is None:
            return 0.0
        output = self.purse.most_output or cap
        estimate = cost_usd(self.provider, self.model, self.base_url,
                            Tokens(self.gauge.tokens(chars), output)) or 0.0
        try:
            self.purse.hold(estimate)
        except SpendingLimitReached as e:
            raise BudgetSpent(str(e)) from None
        return estimate

    def _record(self, info: CallInfo, outcome: str, started: float, reply: Reply | None = None,
                error: str | None = None) -> None:
        tokens = (Tokens(reply.input_tokens, reply.output_tokens, reply.cache_read_tokens or 0,
                         reply.cache_write_tokens or 0)
                  if reply is not None and reply.input_tokens is not None and reply.output_tokens is not None else None)
        cost = cost_usd(self.provider, self.model, self.base_url, tokens)
        if self.purse is not None and reply is not None:
            self.purse.charge(cost, reply.output_tokens)
        self.report(LlmCall(t=datetime.now(timezone.utc).replace(tzinfo=None), run_id=self.run_id, role=info.role,
                            provider=self.provider, model=self.model, outcome=outcome, lane=info.lane,
                            experiment_id=info.experiment_id,
                            input_tokens=reply.input_tokens if reply is not None else None,
                            output_tokens=reply.output_tokens if reply is not None else None,
                            cost_usd=cost, latency_ms=(time.monotonic() - started) * 1000, error=error,
                            cache_read_tokens=reply.cache_read_tokens if reply is not None else None,
                            cache_write_tokens=reply.cache_write_tokens if reply is not None else None))

    async def _request(self, system: str, messages: list[Message], tools: list[Tool], cap: int) -> Reply:
        if self.provider == "anthropic":
            return await _anthropic_request(self._client(), self.model, cap, system, messages, tools)
        return await _openai_request(self._client(), self.model, cap, system, messages, tools)


def _prompt_chars(system: str, messages: list[Message], tools: list[Tool]) -> int:
    size = len(system) + sum(len(t.name) + len(t.description) + len(json.dumps(t.parameters)) for t in tools)
    for m in messages:
        size += len(m.content) + sum(len(c.name) + len(c.raw) for c in m.tool_calls) + 16  # a turn's wrapping
    return size


def _make_sdk(provider: str, base_url: str | None, timeout: float, api_key: str | None = None):
    # max_retries=0: the retry loop above owns waiting, so one lane's backoff is visible in
    # the accounting and bounded by its budget.
    key = {"api_key": api_key} if api_key else {}  # else the SDK reads its own variable
    if provider == "anthropic":
        import anthropic

        return anthropic.AsyncAnthropic(base_url=base_url, max_retries=0, timeout=timeout, **key)
    import openai

    # A local server (vLLM, Ollama, llama.cpp) usually wants no key, but the SDK insists on one.
    if not key and base_url and not os.environ.get("OPENAI_API_KEY"):
        key = {"api_key": "unused"}
    return openai.AsyncOpenAI(base_url=base_url, max_retries=0, timeout=timeout, **key)


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
        return Reply("", (), _usage(response, "prompt_tokens"), _usage(response, "completion_tokens"),
                     cache_read_tokens=_openai_cached(response))
    choice = response.choices[0]
    calls = []
    for i, call in enumerate(choice.message.tool_calls or ()):
        function = getattr(call, "function", None)
        arguments, raw = _parse_arguments(getattr(function, "arguments", None))
        calls.append(ToolCall(call.id or f"call_{i}", getattr(function, "name", "") or "", arguments, raw))
    return Reply(choice.message.content or "", tuple(calls), _usage(response, "prompt_tokens"),
                 _usage(response, "completion_tokens"), truncated=choice.finish_reason == "length",
                 cache_read_tokens=_openai_cached(response))


def _openai_cached(response) -> int | None:
    details = getattr(getattr(response, "usage", None), "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None)
    return cached if isinstance(cached, int) else None


def _usage(response, name: str) -> int | None:
    usage = getattr(response, "usage", None)
    return getattr(usage, name, None) if usage is not None else None


# -- Anthropic messages ---------------------------------------------------------------------------

CACHE = {"type": "ephemeral"}


def anthropic_wire(system: str, messages: list[Message], tools: list[Tool]) -> dict:
    """The request's system, messages and tools, with prompt-cache breakpoints: after the
    system prompt (which follows the tools, so both are cached), after a message's stable
    prefix (the frontier's code), and at the end of the conversation so far, so that each
    turn of a proposal reads the turns before it from the cache. Three of the four allowed."""
    wire: list[dict] = []
    for m in messages:
        if m.role == "assistant":
            blocks = [{"type": "text", "text": m.content}] if m.content else []
            blocks += [{"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments or {}}
                       for c in m.tool_calls]
            wire.append({"role": "assistant", "content": blocks or [{"type": "text", "text": "(no reply)"}]})
            continue
        if m.role == "tool":
            new = [{"type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.content, "is_error": m.is_error}]
        elif 0 < m.cache_prefix < len(m.content):
            new = [{"type": "text", "text": m.content[:m.cache_prefix], "cache_control": CACHE},
                   {"type": "text", "text": m.content[m.cache_prefix:]}]
        else:
            new = [{"type": "text", "text": m.content}]
        if wire and wire[-1]["role"] == "user":  # tool results and a nudge share one user turn
            wire[-1]["content"].extend(new)
        else:
            wire.append({"role": "user", "content": new})
    if len(messages) > 1 and "cache_control" not in wire[-1]["content"][-1]:
        wire[-1]["content"][-1] = {**wire[-1]["content"][-1], "cache_control": CACHE}
    body = {"system": [{"type": "text", "text": system, "cache_control": CACHE}], "messages": wire}
    if tools:
        body["tools"] = [{"name": t.name, "description": t.description, "input_schema": t.parameters} for t in tools]
    return body


async def _anthropic_request(sdk, model, max_tokens, system, messages, tools) -> Reply:
    response = await sdk.messages.create(model=model, max_tokens=max_tokens, **anthropic_wire(system, messages, tools))
    texts, calls = [], []
    for i, block in enumerate(response.content or ()):
        if block.type == "text":
            texts.append(block.text)
        elif block.type == "tool_use":
            arguments, raw = _parse_arguments(block.input)
            calls.append(ToolCall(block.id or f"toolu_{i}", block.name, arguments, raw))
    usage = response.usage
    fresh = getattr(usage, "input_tokens", None)
    read = getattr(usage, "cache_read_input_tokens", None) or 0
    written = getattr(usage, "cache_creation_input_tokens", None) or 0
    # Anthropic counts cached tokens apart from input_tokens; the row counts every prompt token.
    return Reply("\n".join(texts), tuple(calls), fresh + read + written if fresh is not None else None,
                 getattr(usage, "output_tokens", None), truncated=response.stop_reason == "max_tokens",
                 cache_read_tokens=read if fresh is not None else None,
                 cache_write_tokens=written if fresh is not None else None)

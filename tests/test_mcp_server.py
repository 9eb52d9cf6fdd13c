"""External agents through the MCP server (external/): a real supervisor (`--agent external`,
CPU lanes, the fake trainer, real git, a real DuckDB file) and real MCP clients (the official
SDK over streamable HTTP, with the session's bearer token)."""

import asyncio
import difflib
import json
import os
import subprocess
import time
from pathlib import Path

import duckdb
import pytest

from fake_research import make_repo
from mcp_lab import Refusal, Supervisor, connect


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 300))


def rows(db: Path, sql: str, *params):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def set_line(text: str, name: str, value) -> str:
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith(f"{name} = "):
            lines[i] = f"{name} = {value!r}\n"
            return "".join(lines)
    raise AssertionError(name)


def patch_for(text: str, new: str, path: str = "train.py") -> str:
    return "".join(difflib.unified_diff(text.splitlines(keepends=True), new.splitlines(keepends=True),
                                        f"a/{path}", f"b/{path}"))


def test_two_agents_at_once_claim_edit_or_patch_submit_and_get_the_engines_decisions(tmp_path):
    repo = make_repo(tmp_path / "repo")
    lab = Supervisor(repo, "--max-experiments", "6")
    try:
        async def by_editing():
            async with connect(lab.url, lab.token, "agent-edit") as agent:
                claim = await agent.call("claim_lane", wait_s=60)
                worktree = Path(claim["worktree"])
                assert claim["editable_files"] == ["train.py"] and worktree.is_dir()
                assert claim["frontier_commit"] == git(repo, "rev-parse", "autoresearch/t")
                train = worktree / "train.py"
                train.write_text(set_line(train.read_text(), "VALUE", 0.9))
                sent = await agent.call("submit_experiment", lane=claim["lane"], description="VALUE 0.9",
                                        hypothesis="a lower value is a lower loss")
                return claim, sent, await agent.call("wait_for_result", experiment_id=sent["experiment_id"],
                                                     timeout_s=120)

        async def by_patch():
            async with connect(lab.url, lab.token, "agent-patch") as agent:
                claim = await agent.call("claim_lane", wait_s=60)
                frontier = await agent.call("read_frontier", path="train.py")
                text = frontier["text"] + "\n"
                diff = patch_for(text, set_line(text, "BONUS", 0.05))
                sent = await agent.call("submit_experiment", lane=claim["lane"], description="BONUS 0.05",
                                        hypothesis="the bonus is subtracted", patch=diff)
                return claim, sent, await agent.call("wait_for_result", experiment_id=sent["experiment_id"],
                                                     timeout_s=120)

        async def both():
            return await asyncio.gather(by_editing(), by_patch())

        (claim_a, sent_a, result_a), (claim_b, sent_b, result_b) = run(both())
        assert {claim_a["lane"], claim_b["lane"]} == {0, 1}
    finally:
        code, out, err = lab.stop()
    assert code == 0, err[-3000:]
    db = repo / ".autoresearch" / "results.duckdb"
    for sent, result, client, description in ((sent_a, result_a, "agent-edit", "VALUE 0.9"),
                                              (sent_b, result_b, "agent-patch", "BONUS 0.05")):
        ((agent, decision, reason, value, hypothesis),) = rows(
            db, "SELECT agent, decision, decision_reason, val_bpb, hypothesis FROM experiments WHERE id = ?",
            sent["experiment_id"])
        assert agent == f"external:{client}" and hypothesis
        assert result["judged"] and result["decision"] == decision and result["reason"] == reason
        assert result["val_bpb"] == pytest.approx(value)
        assert result["description"] == description
    assert result_a["val_bpb"] == pytest.approx(0.9) and result_b["val_bpb"] == pytest.approx(0.95)
    # every call is in the log with its client's name, and the token nowhere
    calls = rows(db, "SELECT kind, json_extract_string(detail, '$.client') FROM events WHERE kind LIKE 'agent:%'")
    assert ("agent:claim_lane", "agent-edit") in calls and ("agent:submit_experiment", "agent-patch") in calls
    assert ("agent:read_frontier", "agent-patch") in calls and ("agent:wait_for_result", "agent-edit") in calls
    logs = (repo / ".autoresearch" / "logs" / "t" / "supervisor.log").read_text()
    dumped = "\n".join(str(r) for r in rows(db, "SELECT * FROM events")) + str(rows(db, "SELECT * FROM runs"))
    assert lab.token not in logs + out + err + dumped
    assert "external agents: MCP server at http://127.0.0.1:" in out
    # while a lane waits for a submission, its pane says so
    assert any(json.loads(line).get("detail") == "waiting for an agent" for line in out.splitlines())
    assert oct((repo / ".autoresearch" / "mcp.json").stat().st_mode & 0o777) == "0o600"


def test_bad_submissions_are_refused_with_a_reason_and_change_nothing(tmp_path):
    repo = make_repo(tmp_path / "repo")
    lab = Supervisor(repo, "--max-experiments", "4")
    db = repo / ".autoresearch" / "results.duckdb"
    try:
        async def session():
            async with connect(lab.url, lab.token, "careless") as agent, \
                    connect(lab.url, lab.token, "other") as other:
                claim = await agent.call("claim_lane", wait_s=60)
                lane, worktree = claim["lane"], Path(claim["worktree"])
                refusals = {}

                async def refused(name, tool, **args):
                    with pytest.raises(Refusal) as caught:
                        await (other if name == "not yours" else agent).call(tool, **args)
                    refusals[name] = str(caught.value)

                await refused("empty", "submit_experiment", lane=lane, description="nothing")
                (worktree / "prepare.py").write_text("MAX_SEQ_LEN = 4096  # a shortcut\n")
                (worktree / "train.py").write_text(set_line((worktree / "train.py").read_text(), "VALUE", 0.8))
                await refused("prepare.py", "submit_experiment", lane=lane, description="shortcut")
                git(worktree, "checkout", "--", "prepare.py")
                text = (await agent.call("read_frontier", path="train.py"))["text"] + "\n"
                await refused("bad patch", "submit_experiment", lane=lane, description="stale",
                              patch=patch_for(text.replace("VALUE = 1.0", "VALUE = 7.0"), "VALUE = 2.0\n"))
                await refused("patch outside", "submit_experiment", lane=lane, description="escape",
                              patch=patch_for("x\n", "y\n", path="../outside.txt"))
                await refused("patch prepare", "submit_experiment", lane=lane, description="harness",
                              patch=patch_for("# the fixed harness\nMAX_SEQ_LEN = 2048\n",
                                              "# the fixed harness\nMAX_SEQ_LEN = 4096\n", path="prepare.py"))
                await refused("not yours", "submit_experiment", lane=lane, description="theft")
                await refused("no description", "submit_experiment", lane=lane, description="  ")
                before = len((await agent.call("experiment_history", limit=200))["experiments"])
                # the claim survived every refusal: the right submission goes through
                first = await agent.call("submit_experiment", lane=lane, description="VALUE 0.8")
                await agent.call("wait_for_result", experiment_id=first["experiment_id"], timeout_s=120)
                return refusals, before, first

        refusals, before, first = run(session())
    finally:
        code, out, err = lab.stop()
    assert code == 0, err[-3000:]
    assert "no change against the frontier" in refusals["empty"]
    assert "prepare.py, which only a person may edit" in refusals["prepare.py"]
    assert "does not apply to the frontier" in refusals["bad patch"]
    assert "outside the worktree" in refusals["patch outside"]
    assert "prepare.py, which only a person may edit" in refusals["patch prepare"]
    assert "claimed by another client (careless)" in refusals["not yours"]
    assert "one-line description" in refusals["no description"]
    assert not (tmp_path / "outside.txt").exists()
    # refused submissions left no experiment behind: only the baselines ran before the good one
    assert before == 2
    assert rows(db, "SELECT agent, description FROM experiments WHERE id = ?", first["experiment_id"]) == [
        ("external:careless", "VALUE 0.8")]
    refused_calls = rows(db, "SELECT count(*) FROM events WHERE kind = 'agent:submit_experiment' "
                             "AND json_extract_string(detail, '$.refused') IS NOT NULL")[0][0]
    assert refused_calls == 7


def test_a_duplicate_change_is_refused_on_the_same_frontier(tmp_path):
    repo = make_repo(tmp_path / "repo")
    lab = Supervisor(repo, "--max-experiments", "5")
    try:
        async def session():
            async with connect(lab.url, lab.token, "repeater") as agent:
                first = await agent.call("claim_lane", wait_s=60)
                text = (await agent.call("read_frontier", path="train.py"))["text"] + "\n"
                worse = patch_for(text, set_line(text, "VALUE", 1.5))  # discarded: the frontier stays
                sent = await agent.call("submit_experiment", lane=first["lane"], description="VALUE 1.5", patch=worse)
                judged = await agent.call("wait_for_result", experiment_id=sent["experiment_id"], timeout_s=120)
                second = await agent.call("claim_lane", wait_s=60)
                assert second["frontier_commit"] == first["frontier_commit"]
                with pytest.raises(Refusal) as caught:
                    await agent.call("submit_experiment", lane=second["lane"], description="again", patch=worse)
                # and the worktree is as it was: the refused patch was taken back out
                assert git(Path(second["worktree"]), "status", "--porcelain") == ""
                return judged, str(caught.value)

        judged, refusal = run(session())
    finally:
        code, out, err = lab.stop()
    assert code == 0, err[-3000:]
    assert judged["decision"] == "discard"
    assert "already tried on this frontier (VALUE 1.5" in refusal


def test_without_the_token_nothing_is_served(tmp_path):
    repo = make_repo(tmp_path / "repo")
    lab = Supervisor(repo, "--max-experiments", "2")
    try:
        import httpx2

        for headers in ({}, {"Authorization": "Bearer not-the-token"}, {"Authorization": lab.token}):
            reply = httpx2.post(lab.url, headers={**headers, "Content-Type": "application/json",
                                                  "Accept": "application/json, text/event-stream"},
                                content=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
            assert reply.status_code == 401
            assert "Authorization: Bearer" in reply.json()["error"]

        async def with_wrong_token():
            async with connect(lab.url, "wrong", "intruder") as agent:
                await agent.call("research_status")

        with pytest.raises(BaseException):
            run(with_wrong_token())
    finally:
        code, out, err = lab.stop()
    assert code == 0, err[-3000:]
    db = repo / ".autoresearch" / "results.duckdb"
    assert rows(db, "SELECT count(*) FROM events WHERE kind LIKE 'agent:%'")[0][0] == 0


def test_a_claim_left_without_a_submission_is_released_and_its_edits_undone(tmp_path):
    repo = make_repo(tmp_path / "repo")
    lab = Supervisor(repo, "--max-experiments", "3", "--claim-seconds", "2", lanes=1)
    try:
        async def session():
            async with connect(lab.url, lab.token, "sleepy") as sleepy, \
                    connect(lab.url, lab.token, "awake") as awake:
                claim = await sleepy.call("claim_lane", wait_s=60)
                worktree = Path(claim["worktree"])
                (worktree / "train.py").write_text("half an edit\n")
                with pytest.raises(Refusal, match="no lane is free"):
                    await awake.call("claim_lane", wait_s=0)
                started = time.monotonic()
                taken = await awake.call("claim_lane", wait_s=30)
                waited = time.monotonic() - started
                assert taken["lane"] == claim["lane"]
                assert git(worktree, "status", "--porcelain") == ""  # sleepy's edit is gone
                with pytest.raises(Refusal, match="claimed by another client"):
                    await sleepy.call("submit_experiment", lane=claim["lane"], description="too late")
                released = await awake.call("release_lane", lane=taken["lane"])
                return waited, released

        waited, released = run(session())
    finally:
        lab.stop()
    assert 0.5 < waited < 10
    assert released == {"released": 0}


def test_after_a_crash_and_resume_the_experiment_runs_again_and_a_new_session_gets_its_result(tmp_path):
    repo = make_repo(tmp_path / "repo")
    lab = Supervisor(repo)
    try:
        async def submit():
            async with connect(lab.url, lab.token, "patient") as agent:
                claim = await agent.call("claim_lane", wait_s=60)
                train = Path(claim["worktree"]) / "train.py"
                text = set_line(set_line(train.read_text(), "VALUE", 0.85), "DURATION", 6.0)
                train.write_text(text)
                sent = await agent.call("submit_experiment", lane=claim["lane"], description="slow and good")
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:  # until it trains
                    status = await agent.call("research_status")
                    running = [lane["running"] for lane in status["lanes"] if lane["running"]]
                    if any(r["experiment_id"] == sent["experiment_id"] for r in running):
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError("the experiment never started")
                early = await agent.call("wait_for_result", experiment_id=sent["experiment_id"], timeout_s=0.5)
                return sent["experiment_id"], early

        experiment_id, early = run(submit())
        lab.kill()  # kill -9 while it trains
    finally:
        if lab.proc.poll() is None:
            lab.kill()
    assert early["judged"] is False and early["status"] == "running"
    resumed = Supervisor(repo, "--resume")
    try:
        async def later():
            async with connect(resumed.url, resumed.token, "patient-again") as agent:
                return await agent.call("wait_for_result", experiment_id=experiment_id, timeout_s=120)

        result = run(later())
    finally:
        code, out, err = resumed.stop()
    assert code == 0, err[-3000:]
    assert result["judged"] and result["decision"] == "keep"
    assert result["val_bpb"] == pytest.approx(0.85)
    assert result["ran_as"] is not None and result["ran_as"] != experiment_id
    db = repo / ".autoresearch" / "results.duckdb"
    assert rows(db, "SELECT status FROM experiments WHERE id = ?", experiment_id) == [("interrupted",)]
    assert rows(db, "SELECT rerun_of, agent FROM experiments WHERE id = ?", result["ran_as"]) == [
        (experiment_id, "external:patient")]


def test_beside_a_built_in_agent_the_server_informs_but_gives_out_no_lane(tmp_path):
    repo = make_repo(tmp_path / "repo")
    lab = Supervisor(repo, "--agent", "offline", "--mcp", "--max-experiments", "3")
    try:
        async def session():
            async with connect(lab.url, lab.token, "onlooker") as agent:
                status = await agent.call("research_status")
                with pytest.raises(Refusal) as caught:
                    await agent.call("claim_lane", wait_s=0)
                await agent.call("remember", text="the offline mutator moves learning rates", tags=["note"])
                return status, str(caught.value)

        status, refusal = run(session())
    finally:
        code, out, err = lab.stop()
    assert code == 0, err[-3000:]
    assert len(status["lanes"]) == 2 and status["metric"] == "val_bpb"
    assert "driven by the built-in agent" in refusal and "--agent external" in refusal
    db = repo / ".autoresearch" / "results.duckdb"
    assert rows(db, "SELECT author FROM memories WHERE text LIKE 'the offline mutator%'") == [("external:onlooker",)]

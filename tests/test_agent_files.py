"""`autoresearch-tui agent-files`: the files that start Claude Code or Codex as the lab's
researchers parse as their tools read them, and every tool they name is one the real MCP
server (external/server.py, listed through the official SDK's client) serves."""

import asyncio
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from mcp import Client

from external.server import Lab, build
from external.view import LabView
from results.metric import Metric

ROOT = Path(__file__).resolve().parent.parent


def agent_files(folder: Path, *args: str):
    return subprocess.run([sys.executable, "-m", "autoresearch_tui.cli", "agent-files", "--dir", str(folder), *args],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=60)


def served_tools() -> set[str]:
    view = LabView("t", [(0, "cpu")], "abc", Metric(), budget_s=None, max_experiments=None, max_cost=None)
    lab = Lab(view, None, ("train.py",), ROOT, recall=lambda q, k: [], remember=lambda *a: None,
              record=lambda *a: None)

    async def names():
        async with Client(build(lab)) as client:
            return {tool.name for tool in (await client.list_tools()).tools}
    return asyncio.run(names())


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    head, _, body = text[4:].partition("\n---\n")
    assert body.strip()
    fields = dict(line.split(": ", 1) for line in head.splitlines())
    return fields


def test_claude_files_are_valid_and_name_only_tools_the_server_has(tmp_path):
    done = agent_files(tmp_path, "--for", "claude")
    assert done.returncode == 0, done.stderr
    tools = served_tools()
    server = json.loads((tmp_path / ".mcp.json").read_text())["mcpServers"]["autoresearch"]
    assert server["type"] == "http" and "/mcp" in server["url"]
    assert server["headers"]["Authorization"] == "Bearer ${AUTORESEARCH_MCP_TOKEN}"  # the token itself never
    worker = front_matter((tmp_path / ".claude" / "agents" / "experiment-worker.md").read_text())
    assert worker["name"] == "experiment-worker" and worker["description"]
    named = [t.strip() for t in worker["tools"].split(",")]
    mcp_tools = {t.removeprefix("mcp__autoresearch__") for t in named if t.startswith("mcp__")}
    assert mcp_tools == tools  # every tool a worker needs, and no name the server lacks
    orchestrator = (tmp_path / ".claude" / "commands" / "research.md").read_text()
    assert front_matter(orchestrator)["description"]
    mentioned = set(re.findall(r"`([a-z_]+)`", orchestrator)) - {"autoresearch"}
    assert mentioned and mentioned <= tools
    # the next steps it prints use the same variable names the files read
    assert "AUTORESEARCH_MCP_TOKEN" in done.stdout and "--agent external" in done.stdout


def test_codex_files_are_valid_and_name_only_tools_the_server_has(tmp_path):
    done = agent_files(tmp_path, "--for", "codex")
    assert done.returncode == 0, done.stderr
    config = tomllib.loads((tmp_path / ".codex" / "config.toml").read_text())["mcp_servers"]["autoresearch"]
    assert config["url"].endswith("/mcp") and config["bearer_token_env_var"] == "AUTORESEARCH_MCP_TOKEN"
    guide = (tmp_path / "AGENTS.md").read_text()
    mentioned = {m for m in re.findall(r"`([a-z_]+)`", guide) if "_" in m}
    assert {"claim_lane", "submit_experiment", "wait_for_result"} <= mentioned <= served_tools()


def test_existing_files_are_never_overwritten_unless_asked(tmp_path):
    (tmp_path / "AGENTS.md").write_text("the user's own instructions\n")
    done = agent_files(tmp_path, "--for", "codex")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"autoresearch-tui agent-files: {tmp_path / 'AGENTS.md'} exists and differs; move it away or use --force "
        f"to replace it"]
    assert (tmp_path / "AGENTS.md").read_text() == "the user's own instructions\n"
    assert not (tmp_path / ".codex").exists()  # all or nothing
    assert agent_files(tmp_path, "--for", "codex", "--force").returncode == 0
    assert "autoresearch" in (tmp_path / "AGENTS.md").read_text()
    assert agent_files(tmp_path, "--for", "codex").returncode == 0  # the same files again: nothing to refuse
    assert agent_files(tmp_path, "--for", "gemini").returncode == 2

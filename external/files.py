"""`autoresearch-tui agent-files --for claude|codex`: what a user needs to start a coding agent
they already have as the lab's researchers.

Claude Code: `.mcp.json` (the server), `.claude/agents/experiment-worker.md` (a subagent that
claims a lane, makes one focused change with a hypothesis, submits, waits, writes a memory,
and goes again) and `.claude/commands/research.md` (the orchestrator, started with /research).
Codex: `.codex/config.toml` (the server) and `AGENTS.md` (the same loop for one agent).

The URL and the token change with every session, so the files name them through the
environment (AUTORESEARCH_MCP_URL, AUTORESEARCH_MCP_TOKEN) and never hold the token itself:
`.mcp.json` is often committed. The tool names are the server's (external/server.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SERVER_NAME = "autoresearch"
DEFAULT_URL = "http://127.0.0.1:8765/mcp"  # with `--mcp-port 8765`, the port the README suggests
URL_VARIABLE, TOKEN_VARIABLE = "AUTORESEARCH_MCP_URL", "AUTORESEARCH_MCP_TOKEN"
WORKER_TOOLS = ("research_status", "claim_lane", "read_frontier", "submit_experiment", "wait_for_result",
                "experiment_history", "read_run", "remember", "recall", "release_lane")


class AgentFilesError(Exception):
    """One sentence for the user (exit 2)."""


@dataclass(frozen=True)
class AgentFile:
    path: str  # relative to the folder written into
    text: str


def _tool(name: str) -> str:
    return f"mcp__{SERVER_NAME}__{name}"


LOOP = """\
1. `claim_lane` gives you a lane: its worktree (an absolute path, checked out at the frontier), the
   files you may edit, the frontier commit and its {metric}. Nothing else in the worktree may change.
   A `plateau` note in it means the line has gone long without a keep: change direction.
2. Read the editable file (in the worktree, or with `read_frontier`), and `recall` what earlier
   experiments taught. `experiment_history` shows what was tried and how it was judged; `read_run`
   shows how one run went (loss curve, tok/s, peak VRAM, the gain in noise sigmas, its diff, a
   crash's log): read the near misses and the crashes before you choose.
3. Make ONE focused change with a clear hypothesis: a hyperparameter, an architectural detail, an
   optimizer setting. Small and testable beats large and vague; the same diff is never run twice.
4. `submit_experiment` with the lane, a one-line description and the hypothesis (or pass `patch`,
   a unified diff against the frontier, instead of editing files). A refusal says why: fix it and
   submit again, or `release_lane` if you give up on the idea.
5. `wait_for_result` until it is judged (call it again if it returns progress instead). The lab
   decides keep or discard against the measured noise, not you.
6. `remember` one sentence of what the result teaches, then start again at 1.
"""

WORKER = """\
---
name: experiment-worker
description: Runs one experiment at a time on the autoresearch lab: claims a GPU lane, makes one focused change to the training program with a hypothesis, submits it, waits for the judgement, records what it learnt, and repeats.
tools: Read, Edit, Grep, Glob, {tools}
---

You are a research engineer improving a small GPT training program. The lab (autoresearch-tui)
owns the GPUs: it trains every change for a fixed time, measures {metric} ({direction} is better)
and keeps or discards it against the run-to-run noise. Your job is good ideas, one at a time.

{loop}
Work only inside the worktree the lab gave you. Never edit prepare.py or anything outside the
editable files, never run the training yourself, and never touch git: the lab commits.
If the orchestrator gave you a direction, stay in it.
"""

ORCHESTRATOR = """\
---
description: Run the autoresearch lab with one experiment-worker per GPU lane
---

You lead a team of experiment-worker subagents on the autoresearch lab (its MCP server is
`{server}`). The lab trains, measures and judges; you decide what to try.

1. Call `research_status`: how many lanes there are, the frontier and its {metric}, the noise
   margin a change must beat. Call `experiment_history` and `recall` to see what is known.
2. Start as many experiment-worker subagents as there are lanes, each with a different
   direction (say: learning rates and schedule; model width and depth; attention and
   normalisation; optimizer settings; data and batch size), chosen from what has not been tried.
3. As workers report, read `experiment_history` again: when a direction stops paying, give that
   worker a new one; when a change is kept, tell the others it is in the frontier now.
4. Keep every lane busy: there should always be one worker per lane until the user stops you.
{extra}"""

AGENTS_MD = """\
# Research on the autoresearch lab

This repository is driven by autoresearch-tui: a lab of GPU lanes that train a small GPT for a
fixed time, measure {metric} ({direction} is better) and keep or discard each change against the
run-to-run noise. You propose the changes through its MCP server `{server}`; the lab runs them.

## The loop
{loop}
## Rules
- Work only inside the worktree `claim_lane` returns; edit only its editable files.
- Never edit prepare.py, never run the training yourself, never run git: the lab commits.
- One idea per experiment, each with a hypothesis you can learn from whichever way it goes.
- Keep going until the user stops you: a lane waiting for you is a GPU doing nothing.
"""


def agent_files(kind: str, *, metric: str = "val_bpb", direction: str = "lower") -> list[AgentFile]:
    words = {"metric": metric, "direction": direction, "server": SERVER_NAME}
    loop = LOOP.format(**words)
    if kind == "claude":
        mcp = {"mcpServers": {SERVER_NAME: {"type": "http", "url": f"${{{URL_VARIABLE}:-{DEFAULT_URL}}}",
                                            "headers": {"Authorization": f"Bearer ${{{TOKEN_VARIABLE}}}"}}}}
        tools = ", ".join(_tool(name) for name in WORKER_TOOLS)
        return [AgentFile(".mcp.json", json.dumps(mcp, indent=2) + "\n"),
                AgentFile(".claude/agents/experiment-worker.md", WORKER.format(tools=tools, loop=loop, **words)),
                AgentFile(".claude/commands/research.md", ORCHESTRATOR.format(extra="", **words))]
    if kind == "codex":
        config = (f"[mcp_servers.{SERVER_NAME}]\n"
                  f"url = \"{DEFAULT_URL}\"  # the url in .autoresearch/mcp.json, if --mcp-port was not 8765\n"
                  f"bearer_token_env_var = \"{TOKEN_VARIABLE}\"\n"
                  f"tool_timeout_sec = 900  # wait_for_result waits for a whole training run\n")
        return [AgentFile(".codex/config.toml", config), AgentFile("AGENTS.md", AGENTS_MD.format(loop=loop, **words))]
    raise AgentFilesError(f"--for must be claude or codex, not {kind!r}")


def write(files: list[AgentFile], folder: Path, *, force: bool = False) -> list[Path]:
    """Write every file, or none: an existing file that differs is left alone unless `force`."""
    clashes = [f.path for f in files if (folder / f.path).exists() and (folder / f.path).read_text() != f.text]
    if clashes and not force:
        raise AgentFilesError(f"{folder / clashes[0]} exists and differs; move it away or use --force to replace it")
    written = []
    for f in files:
        path = folder / f.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f.text)
        written.append(path)
    return written


def how_to_start(kind: str, folder: Path) -> str:
    """What to type next, printed after the files are written."""
    endpoint = folder / ".autoresearch" / "mcp.json"
    read = "python3 -c \"import json; print(json.load(open('{path}'))['{key}'])\""
    start = ("claude   # then type /research" if kind == "claude"
             else "codex \"Follow AGENTS.md: run experiments on the autoresearch lab until I stop you.\"")
    return "\n".join([
        "1. start the lab:       uv run autoresearch-tui --agent external --mcp-port 8765",
        f"2. in another terminal, in {folder}:",
        f"   export {TOKEN_VARIABLE}=$({read.format(path=endpoint, key='token')})",
        f"   export {URL_VARIABLE}=$({read.format(path=endpoint, key='url')})",
        f"   {start}", ""])

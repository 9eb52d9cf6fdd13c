"""The MCP server inside the supervisor: external coding agents' door to the lab.

Streamable HTTP on 127.0.0.1 (the official `mcp` SDK under uvicorn, on a thread of its own),
a bearer token made per session, and the URL and token written to `.autoresearch/mcp.json`
(mode 0600) for the agent files to point at. The tools' names are a contract (agent files and
users' own prompts name them): research_status, claim_lane, read_frontier, submit_experiment,
wait_for_result, experiment_history, read_run, remember, recall, release_lane.

Nothing here writes the log or moves the research itself: proposals go through the lanes'
proposal threads (lanes.py), memories and the record of every call through the engine's
inbox; what the tools tell comes from the events (view.py) and the store's readers."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import secrets
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings

from results.evidence import RunEvidence

from .calls import CallLog
from .changes import Refused
from .lanes import ExternalProposer
from .view import LabView

log = logging.getLogger("autoresearch.mcp")

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
WAIT_CAP_S = 600.0  # one wait_for_result call: an MCP client's own request timeout is usually shorter
QUEUED_WITHIN_S = 60.0  # a checked submission becomes an experiment as soon as the engine's loop turns


@dataclass(frozen=True)
class Endpoint:
    url: str
    token: str
    file: Path  # .autoresearch/mcp.json


@dataclass(frozen=True)
class Lab:
    """What the server is lent by the composition root (autoresearch_tui/startup.py)."""

    view: LabView
    proposer: ExternalProposer | None  # None: built-in agents drive the lanes; nothing to claim
    editable: tuple[str, ...]
    repo: Path
    recall: Callable[[str, int], list[str]]
    remember: Callable[[str, tuple[str, ...], str], None]  # text, tags, author
    record: CallLog  # every call, as an events row: client, tool, detail, lane, experiment
    read_run: Callable[[int], RunEvidence | None] = lambda experiment_id: None  # results/evidence.py


def _client(ctx: Context) -> str:
    """The client's own name for itself (`clientInfo.name`), which claims are held under.
    Subagents of one Claude Code share its connection, and so its claims."""
    params = ctx.session.client_params
    info = getattr(params, "client_info", None) if params is not None else None
    return (getattr(info, "name", None) or "anonymous")[:64]


def build(lab: Lab) -> MCPServer:
    server = MCPServer("autoresearch-tui", instructions=(
        "A lab of GPU lanes that train a small GPT for a fixed time and judge each change against the "
        "noise. Claim a lane, make one focused change to the editable files with a hypothesis, submit it, "
        "wait for its result, remember what you learnt, repeat."))

    def refuse(error: Refused) -> ToolError:
        return ToolError(str(error))

    @server.tool()
    async def research_status(ctx: Context) -> dict:
        """The lanes (state, GPU, what trains and how far), the frontier commit and its metric,
        the noise sigma and the margin a change must beat, the budget, the constraints a run must
        respect (a summary key and its ceiling: a run past one is discarded), experiments done
        and kept, LLM spend."""
        lab.record(_client(ctx), "research_status", {}, None, None)
        open_lanes = lab.proposer.open_lanes() if lab.proposer else {}
        return lab.view.status(open_lanes)

    @server.tool()
    async def claim_lane(ctx: Context, wait_s: float = 20.0) -> dict:
        """Reserve a lane's draft worktree, checked out at the frontier, for your next change.
        Returns the lane, the worktree's absolute path, the editable files, the frontier commit
        and its metric, and once the line has gone long without a keep a `plateau` note asking
        for a different direction. Waits up to wait_s seconds for a lane to become free. Submit within
        expires_in_s seconds or the lane is released and your edits undone."""
        client = _client(ctx)
        if lab.proposer is None:
            raise ToolError("the lanes are driven by the built-in agent of this session; start the supervisor "
                            "with --agent external to let external agents claim them")
        try:
            claim = await anyio.to_thread.run_sync(lab.proposer.claim, client, min(max(wait_s, 0.0), 120.0))
        except Refused as e:
            lab.record(client, "claim_lane", {"refused": str(e)}, None, None)
            raise refuse(e) from None
        lab.record(client, "claim_lane", {}, claim.lane, None)
        return {"lane": claim.lane, "worktree": str(claim.worktree), "editable_files": list(claim.editable_files),
                "frontier_commit": claim.frontier_commit, claim.metric: claim.frontier_value,
                "expires_in_s": claim.expires_in_s, **({"plateau": claim.plateau} if claim.plateau else {})}

    @server.tool()
    async def read_frontier(ctx: Context, path: str, start_line: int = 1, end_line: int | None = None) -> dict:
        """An editable file (or prepare.py, read-only) as the frontier has it, by line range
        (1-based, inclusive), for agents that do not see the filesystem."""
        readable = (*lab.editable, "prepare.py")
        if path not in readable:
            raise ToolError(f"{path} cannot be read here; these can: {', '.join(readable)}")
        commit = lab.view.frontier()
        done = await anyio.to_thread.run_sync(lambda: subprocess.run(
            ["git", "show", f"{commit}:{PurePosixPath(path)}"], cwd=lab.repo, capture_output=True, text=True))
        if done.returncode != 0:
            raise ToolError(f"{path} is not in the frontier commit {commit[:8]}")
        lines = done.stdout.splitlines()
        first = max(1, start_line)
        last = len(lines) if end_line is None else min(len(lines), end_line)
        lab.record(_client(ctx), "read_frontier", {"path": path, "lines": [first, last]}, None, None)
        return {"path": path, "commit": commit, "total_lines": len(lines), "start_line": first, "end_line": last,
                "text": "\n".join(lines[first - 1:last])}

    @server.tool()
    async def submit_experiment(ctx: Context, lane: int, description: str, hypothesis: str = "",
                                patch: str | None = None) -> dict:
        """Submit your change on a lane you claimed: either edit its worktree first, or pass
        `patch`, a unified diff against the frontier. It is committed and checked (only the
        editable files, not empty, not a change tried on this frontier already), queued on the
        lane, and its experiment id returned; a refusal says why."""
        client = _client(ctx)
        if lab.proposer is None:
            raise ToolError("the lanes are driven by the built-in agent of this session; nothing to submit to")
        try:
            submitted = await anyio.to_thread.run_sync(lab.proposer.submit, client, lane, description, hypothesis,
                                                       patch)
        except Refused as e:
            lab.record(client, "submit_experiment", {"refused": str(e), "description": description[:200]}, lane,
                       None)
            raise refuse(e) from None
        experiment_id = await anyio.to_thread.run_sync(lab.view.experiment_for, submitted.submission,
                                                       QUEUED_WITHIN_S)
        lab.record(client, "submit_experiment", {"description": description[:200], "change": submitted.change,
                                                 "patch": bool(patch)}, lane, experiment_id)
        if experiment_id is None:
            raise ToolError(f"lane {lane} took the change, but the engine has not queued it within "
                            f"{QUEUED_WITHIN_S:.0f} s; research_status shows the lane")
        return {"experiment_id": experiment_id, "lane": lane, "change": submitted.change}

    @server.tool()
    async def wait_for_result(ctx: Context, experiment_id: int, timeout_s: float = 300.0) -> dict:
        """Wait until an experiment is judged, and return its status, metric, change against
        its reference, decision and reason (and the end of its log if it failed); after
        timeout_s seconds, its progress so far instead (call again to keep waiting)."""
        client = _client(ctx)
        lab.record(client, "wait_for_result", {"timeout_s": timeout_s}, None, experiment_id)
        if not lab.view.known(experiment_id):
            raise ToolError(f"there is no experiment #{experiment_id} in this research line")
        deadline = anyio.current_time() + min(max(timeout_s, 0.0), WAIT_CAP_S)
        while True:
            result = lab.view.result(experiment_id)
            if result is not None:
                return result
            if anyio.current_time() >= deadline:
                return lab.view.progress(experiment_id)
            await anyio.sleep(0.2)

    @server.tool()
    async def experiment_history(ctx: Context, lane: int | None = None, decision: str | None = None,
                                 text: str | None = None, limit: int = 30) -> dict:
        """The most recent experiments first, as the built-in agents see them, optionally only
        one lane's, one decision's (keep, discard) or those whose description or hypothesis
        contains `text`."""
        lab.record(_client(ctx), "experiment_history", {"lane": lane, "decision": decision, "text": text}, lane,
                   None)
        return {"experiments": lab.view.history(lane=lane, decision=decision, text=text,
                                                limit=min(max(limit, 1), 200))}

    @server.tool()
    async def read_run(ctx: Context, experiment_id: int) -> dict:
        """How one experiment's run went: steps, tokens, tok/s, MFU, peak VRAM, the metric against
        its parent and the session's start, the gain in noise sigmas with the margin the rule asked
        for, a compact loss curve, its diff against its parent, and for a failed run the end of its log."""
        lab.record(_client(ctx), "read_run", {}, None, experiment_id)
        if not lab.view.known(experiment_id):
            raise ToolError(f"there is no experiment #{experiment_id} in this research line")
        evidence = await anyio.to_thread.run_sync(lab.read_run, experiment_id)
        if evidence is None:
            raise ToolError(f"experiment #{experiment_id} is not in the log yet; try again in a moment")
        return evidence.as_dict()

    @server.tool()
    async def remember(ctx: Context, text: str, tags: list[str] | None = None) -> dict:
        """Keep a lesson in the research line's shared memories (the built-in agents read them too)."""
        client = _client(ctx)
        text = text.strip()
        if not text:
            raise ToolError("a memory needs some text")
        lab.remember(text[:4000], tuple(tags or ()), f"external:{client}")
        lab.record(client, "remember", {"chars": len(text)}, None, None)
        return {"remembered": True}

    @server.tool()
    async def recall(ctx: Context, query: str, k: int = 5) -> dict:
        """The shared memories that best match `query`."""
        lab.record(_client(ctx), "recall", {"query": query[:200]}, None, None)
        return {"memories": await anyio.to_thread.run_sync(lab.recall, query, min(max(k, 1), 20))}

    @server.tool()
    async def release_lane(ctx: Context, lane: int) -> dict:
        """Give a claimed lane back without submitting; its worktree is reset to the frontier."""
        client = _client(ctx)
        if lab.proposer is None:
            raise ToolError("no lane can be claimed in this session")
        try:
            await anyio.to_thread.run_sync(lab.proposer.release, client, lane)
        except Refused as e:
            raise refuse(e) from None
        lab.record(client, "release_lane", {}, lane, None)
        return {"released": lane}

    return server


class _BearerToken:
    """Every HTTP request must carry `Authorization: Bearer <token>`; others get 401 and never
    reach the MCP app. The lifespan passes (it starts the SDK's session manager)."""

    def __init__(self, app, token: str):
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            given = dict(scope.get("headers") or ()).get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):
                body = json.dumps({"error": "unauthorized: send the token from .autoresearch/mcp.json as "
                                            "'Authorization: Bearer <token>'"}).encode()
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class McpThread:
    """The server on a daemon thread with its own event loop; `start` returns once it listens."""

    def __init__(self, lab: Lab, folder: Path, *, host: str = "127.0.0.1", port: int | None = None):
        self.lab, self.folder, self.host, self.port = lab, folder, host, port
        self.token = secrets.token_urlsafe(32)
        self.endpoint: Endpoint | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Endpoint:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port or 0))  # OSError (port taken) reaches the caller: bad input
        sock.listen(128)
        port = sock.getsockname()[1]
        security = None if self.host in LOCAL_HOSTS else TransportSecuritySettings(
            enable_dns_rebinding_protection=False)  # reached by name from other machines; the token guards it
        app = build(self.lab).streamable_http_app(host=self.host, transport_security=security, json_response=True)
        config = uvicorn.Config(_BearerToken(app, self.token), log_level="warning", access_log=False,
                                lifespan="on", timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        started = threading.Event()
        failed: list[BaseException] = []

        def serve() -> None:
            async def main():
                task = asyncio.create_task(self._server.serve(sockets=[sock]))
                while not self._server.started and not task.done():
                    await asyncio.sleep(0.02)
                started.set()
                await task
            try:
                asyncio.run(main())
            except BaseException as e:  # noqa: BLE001 - said to the caller, or logged if it comes later
                failed.append(e)
                log.exception("the MCP server stopped")
            finally:
                started.set()

        self._thread = threading.Thread(target=serve, name="mcp-server", daemon=True)
        self._thread.start()
        self.lab.record.start()
        started.wait(30)
        if failed or not self._server.started:
            raise RuntimeError(f"the MCP server did not start: {failed[0] if failed else 'no answer in 30 s'}")
        where = f"[{self.host}]" if ":" in self.host else self.host
        url = f"http://{where}:{port}/mcp"
        self.endpoint = Endpoint(url, self.token, write_endpoint(self.folder, url, self.token))
        return self.endpoint

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self.lab.record.close()


def write_endpoint(folder: Path, url: str, token: str) -> Path:
    """`.autoresearch/mcp.json`, readable by its owner only, written whole or not at all."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mcp.json"
    tmp = folder / f".mcp.json.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url, "token": token, "pid": os.getpid()}, f)
    os.replace(tmp, path)
    return path

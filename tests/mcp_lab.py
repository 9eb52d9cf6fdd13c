"""A supervisor run by its real command line with `--agent external`, and real MCP clients (the
official SDK over streamable HTTP) to drive it: shared by the MCP server's tests and benchmark."""

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import Implementation

ROOT = Path(__file__).resolve().parent.parent


class Supervisor:
    """`autoresearch-tui --no-ui --agent external` on CPU lanes in a subprocess."""

    def __init__(self, repo: Path, *extra: str, lanes: int = 2, tag: str = "t", env: dict | None = None):
        self.repo = repo
        self.endpoint_file = repo / ".autoresearch" / "mcp.json"
        argv = [sys.executable, "-m", "autoresearch_tui.cli", "--no-ui", "--gpus", f"cpu:{lanes}", "--repo", str(repo),
                "--tag", tag, "--editable", "train.py", "--command", "python train.py", "--budget", "1",
                "--baseline-runs", "2", "--agent", "external", *extra]
        self.proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.url, self.token = self._endpoint()

    def _endpoint(self, limit: float = 60.0) -> tuple[str, str]:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the supervisor ended first: {self.proc.stderr.read()[-3000:]}")
            try:
                info = json.loads(self.endpoint_file.read_text())
                if info.get("pid") == self.proc.pid:
                    return info["url"], info["token"]
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise AssertionError("the MCP server never wrote its endpoint")

    def stop(self, timeout: float = 60.0) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def kill(self) -> None:
        self.proc.kill()
        self.proc.communicate(timeout=30)


@asynccontextmanager
async def connect(url: str, token: str | None, name: str):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=700)) as http:
        async with Client(streamable_http_client(url, http_client=http),
                          client_info=Implementation(name=name, version="1.0")) as client:
            yield Agent(client)


class Agent:
    """Tool calls that return the tool's JSON, or raise Refusal with the server's message."""

    def __init__(self, client: Client):
        self.client = client

    async def call(self, tool: str, **arguments):
        result = await self.client.call_tool(tool, arguments)
        text = "\n".join(getattr(c, "text", "") for c in result.content)
        if result.is_error:
            raise Refusal(text)
        return json.loads(text) if text else None


class Refusal(Exception):
    pass

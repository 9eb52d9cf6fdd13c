"""The provider keys out of reach of what the supervisor starts: taken out of its environment
at start-up (the SDK clients get them as arguments) and the process made non-dumpable, so
that neither a helper it starts nor a same-user process reading /proc finds them. Real child
processes, a real git, the real OpenAI SDK against a loopback server."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fake_research import make_repo
from llm_servers import OpenAIServer
from test_agents_llm import Researcher
from test_supervisor_cli import ROOT, command

KEY = "sk-openai-hunter2-keys-0123456789"


def test_the_supervisor_makes_itself_non_dumpable():
    if sys.platform != "linux":
        pytest.skip("prctl is Linux's")
    probe = ("from scheduler.runs.keys import is_dumpable, make_undumpable; "
             "before = is_dumpable(); ok = make_undumpable(); print(before, ok, is_dumpable())")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.split() == ["True", "True", "False"]


def test_keys_leave_the_environment_so_no_helper_or_child_inherits_them(tmp_path):
    # Every git the supervisor (and gitpython, and the training child) starts goes through this
    # wrapper, which notes whether the key was in its environment.
    real_git = shutil.which("git")
    bin_dir, seen = tmp_path / "bin", tmp_path / "git-saw.txt"
    bin_dir.mkdir()
    wrapper = bin_dir / "git"
    wrapper.write_text(f'#!/bin/sh\nif [ -n "$OPENAI_API_KEY" ]; then echo key >> {seen}; '
                       f'else echo none >> {seen}; fi\nexec {real_git} "$@"\n')
    wrapper.chmod(0o755)
    repo = make_repo(tmp_path / "repo")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": KEY,
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    with OpenAIServer(Researcher()) as server:
        argv = command(repo, "--agent", "openai:gpt-4.1-mini", "--base-url", server.base_url, "--max-experiments", "4")
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    # the key still did its job: every model call carried it...
    assert server.requests and {r.api_key for r in server.requests} == {KEY}
    # ...and not one of the many git processes started during the night had it
    calls = seen.read_text().split()
    assert len(calls) >= 5 and set(calls) == {"none"}
    assert "non-dumpable" in (repo / ".autoresearch" / "logs" / "t" / "supervisor.log").read_text()

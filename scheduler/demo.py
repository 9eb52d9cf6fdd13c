"""`autoresearch-tui --demo`: real research, small enough for any machine.

It builds a throwaway research repository (this package's trainer and harness, committed once)
under `./.autoresearch/demo/`, prepares the tiny data profile if it is not cached, and runs two
CPU lanes with the offline mutator and a short budget. Nothing in it is simulated: the lanes
train real models, measure real val_bpb, and keep or discard real commits."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import git

from .config import Config

DEMO_GPUS = "cpu:2"
DEMO_BUDGET = 20.0  # seconds of training per experiment: long enough for changes to show
DEMO_EXPERIMENTS = 8  # two baselines, then six proposals


class DemoError(Exception):
    pass


def _sources() -> tuple[Path, Path]:
    """Where this installation's trainer package and prepare.py are."""
    trainer = importlib.util.find_spec("trainer")
    harness = importlib.util.find_spec("prepare")
    if trainer is None or harness is None or trainer.origin is None or harness.origin is None:
        raise DemoError("this installation has no trainer or prepare.py to run the demo with.")
    return Path(trainer.origin).parent, Path(harness.origin)


def demo_repo(root: Path) -> Path:
    """The demo's research repository, made on first use and reused after."""
    repo = root / "repo"
    if (repo / ".git").exists():
        return repo
    trainer, harness = _sources()
    staging = root / ".repo-staging"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "trainer").mkdir(parents=True)
    for name in ("__init__.py", "train.py"):
        shutil.copy2(trainer / name, staging / "trainer" / name)
    shutil.copy2(harness, staging / "prepare.py")
    (staging / ".gitignore").write_text("__pycache__/\n.autoresearch/\n")
    r = git.Repo.init(staging, initial_branch="main")
    r.index.add(["prepare.py", "trainer/__init__.py", "trainer/train.py", ".gitignore"])
    actor = git.Actor("autoresearch-tui", "autoresearch-tui@localhost")
    # A fixed date makes the starting commit, and so the mutator's choices from it, the same
    # on every machine: two people running the demo see the same proposals.
    when = "2026-01-01T00:00:00+00:00"
    r.index.commit("The starting point: the tiny-profile trainer and its fixed harness", author=actor,
                   committer=actor, author_date=when, commit_date=when)
    r.close()
    os.replace(staging, repo)  # only a complete repository ever appears under its name
    return repo


def prepare_data(repo: Path) -> None:
    """The tiny profile's data and tokenizer, if not cached yet (a no-op when they are)."""
    result = subprocess.run([sys.executable, "prepare.py", "--tiny"], cwd=repo, stdout=sys.stderr, stderr=sys.stderr)
    if result.returncode != 0:
        raise DemoError(f"preparing the tiny data failed (exit {result.returncode}); see the lines above.")


def demo_config(config: Config, given: set[str], root: Path) -> Config:
    """The demo's settings, wherever the user did not give their own."""
    changes = {"repo": demo_repo(root)}
    defaults = {"gpus": DEMO_GPUS, "budget": DEMO_BUDGET, "max_experiments": DEMO_EXPERIMENTS,
                "tag": f"demo-{datetime.now():%Y%m%d-%H%M%S}", "db": root / "results.duckdb",
                "hung_seconds": 120.0, "agent": "offline"}
    changes.update({k: v for k, v in defaults.items() if k not in given})
    # The tiny profile on every lane, even on a GPU box: the demo is about the loop, not the model.
    os.environ["AUTORESEARCH_PROFILE"] = "tiny"
    return replace(config, **changes)

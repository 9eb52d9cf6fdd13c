"""`autoresearch-tui --demo`: real research, small enough for any machine.

It builds a throwaway research repository (this package's trainer and harness, committed once)
under `./.autoresearch/demo/`, prepares the tiny data profile if it is not cached, and runs two
CPU lanes with the offline mutator and a short budget. Nothing in it is simulated: the lanes
train real models, measure real val_bpb, and keep or discard real commits."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import git

from scheduler.config import Config

DEMO_GPUS = "cpu:2"
DEMO_BUDGET = 20.0  # seconds the runs are sized for (their timeouts): DEMO_STEPS take ~20 s on 2 cores
DEMO_STEPS = 30  # optimizer steps per experiment
DEMO_EXPERIMENTS = 10  # four baselines (two on each lane), then six proposals
# The demo varies the learning rates only. A change of model size changes the step time, and
# on two shared CPU cores the step count of a 20-second run already varies by 10-15%: the
# comparison would mostly measure the machine. A learning rate keeps the step time, so what is
# kept is what trains better.
# The demo starts from the tiny trainer with its learning rates cut to a quarter, so that
# there is something to find within a few experiments: the loop has to rediscover better
# rates, and every keep it makes is a real, measured improvement.
DETUNED = {"MATRIX_LR": 0.25, "EMBEDDING_LR": 0.25, "UNEMBEDDING_LR": 0.25, "SCALAR_LR": 0.25}
DEMO_KNOBS = ("*_LR",)
# The demo's proposals are a fixed sequence: a fixed trainer and a fixed mutator seed. This
# seed's first proposal doubles UNEMBEDDING_LR, the rate whose cut costs the most, so a
# newcomer sees a real keep within minutes, and its next ones are changes that do not pay. The
# mutator draws from the trainer's own text, so a change to the trainer may call for another
# seed (tests/test_demo.py says so).
DEMO_SEED = 2


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
    shutil.copy2(trainer / "__init__.py", staging / "trainer" / "__init__.py")
    (staging / "trainer" / "train.py").write_text(_detuned((trainer / "train.py").read_text()))
    shutil.copy2(harness, staging / "prepare.py")
    (staging / ".gitignore").write_text("__pycache__/\n.autoresearch/\n")
    r = git.Repo.init(staging, initial_branch="main")
    r.index.add(["prepare.py", "trainer/__init__.py", "trainer/train.py", ".gitignore"])
    actor = git.Actor("autoresearch-tui", "autoresearch-tui@localhost")
    # A fixed date makes the starting commit, and so the mutator's choices from it, the same
    # on every machine: two people running the demo see the same proposals.
    when = "1767225600 +0000"  # 2026-01-01 00:00 UTC, in git's raw form
    r.index.commit("The starting point: the trainer with its learning rates cut to a quarter", author=actor,
                   committer=actor, author_date=when, commit_date=when)
    r.close()
    os.replace(staging, repo)  # only a complete repository ever appears under its name
    return repo


def _detuned(source: str) -> str:
    for name, factor in DETUNED.items():
        pattern = re.compile(rf"^({name} = )([0-9.]+)", re.M)
        source = pattern.sub(lambda m: f"{m[1]}{float(m[2]) * factor:g}", source, count=1)
    return source


def prepare_data(repo: Path) -> None:
    """The tiny profile's data and tokenizer, if not cached yet (a no-op when they are)."""
    result = subprocess.run([sys.executable, "prepare.py", "--tiny"], cwd=repo, stdout=sys.stderr, stderr=sys.stderr)
    if result.returncode != 0:
        raise DemoError(f"preparing the tiny data failed (exit {result.returncode}); see the lines above.")


def demo_config(config: Config, given: set[str], root: Path) -> Config:
    """The demo's settings, wherever the user did not give their own."""
    changes = {"repo": demo_repo(root)}
    # On a Ray cluster, two of its GPUs (its "GPUs" may be logical ones on CPU nodes: the tiny
    # model trains on whatever device the node has).
    defaults = {"gpus": "2" if config.executor == "ray" else DEMO_GPUS, "budget": DEMO_BUDGET, "max_experiments": DEMO_EXPERIMENTS,
                "tag": f"demo-{datetime.now():%Y%m%d-%H%M%S}", "db": root / "results.duckdb",
                "hung_seconds": 120.0, "agent": "offline", "seed": DEMO_SEED}
    changes.update({k: v for k, v in defaults.items() if k not in given})
    # The tiny profile on every lane, even on a GPU box: the demo is about the loop, not the model.
    os.environ["AUTORESEARCH_PROFILE"] = "tiny"
    # One seed for every run, as upstream autoresearch does: with only ~40 optimizer steps, the
    # initialisation alone moves val_bpb by up to 0.06, which would drown every change.
    os.environ.setdefault("AUTORESEARCH_SEED", "42")
    # And a fixed number of steps rather than seconds: on a shared laptop a 20-second run's step
    # count varied by 10-30% with the load, which moved val_bpb more than the changes did (a
    # demo could end with no keep). Fixed steps and seed measure the same code the same way
    # every time, so what is kept is what trains better; on GPUs, runs are timed as upstream's.
    os.environ.setdefault("AUTORESEARCH_STEP_BUDGET", str(DEMO_STEPS))
    return replace(config, **changes)

"""A smoke run: the target's training command on each lane at once, for a short budget, through
the real executor (the same child environment, pinning and run contract as a night's runs),
in a throwaway worktree of the repository's HEAD. What `doctor` runs so that a broken kernel,
an out-of-memory or a target that ignores the budget shows before the night, not at 2 a.m."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from results.records import Status
from scheduler.gpus import Gpu
from scheduler.runs.executor import LocalExecutor, RunResult, RunSpec, child_environment, target_command
from scheduler.runs.runparse import parse_progress
from scheduler.runs.sandbox import Confinement, Sandbox
from scheduler.runs.workspace import Workspace

SMOKE_BUDGET_S = {"cpu": 10.0, "gpu": 30.0}  # training seconds: enough for steady steps after a compile
BUDGET_TOLERANCE = 0.5  # a target whose training time is off the budget by more than this fraction sets its own


@dataclass(frozen=True)
class SmokeResult:
    gpu: Gpu
    result: RunResult
    budget: float
    log_path: Path

    @property
    def ok(self) -> bool:
        return self.result.status is Status.OK

    @property
    def figures(self) -> dict:
        s = self.result.summary
        return {
            "attention": s.get("attention_backend"),
            "startup_s": s.get("startup_seconds"),
            "tok_per_s": self.steady_rate(),
            "mfu_percent": s.get("mfu_percent"),
            "steps": s.get("num_steps"),
            "peak_vram_mb": s.get("peak_vram_mb"),
            "val_bpb": s.get("val_bpb"),
            "training_s": s.get("training_seconds"),
            "wall_s": round(self.result.seconds, 1),
        }

    def steady_rate(self) -> float | None:
        """Tokens per second in steady state: the median of the later half of the progress
        lines (the summary's token count is printed to 0.1M, too coarse for a short run)."""
        try:
            lines = self.log_path.read_text(errors="replace").replace("\r", "\n").splitlines()
        except OSError:
            return None
        rates = [p.tok_per_sec for p in map(parse_progress, lines) if p is not None and p.tok_per_sec]
        later = sorted(rates[len(rates) // 2:])
        return later[len(later) // 2] if later else None

    @property
    def follows_budget(self) -> bool | None:
        """Whether the target trained for the budget it was given (None: it did not say)."""
        training = self.result.summary.get("training_seconds")
        if not self.ok or training is None:
            return None
        return abs(training - self.budget) <= BUDGET_TOLERANCE * self.budget


def smoke_runs(repo: Path, command: str, gpus: list[Gpu], logs: Path, budget: float | None = None,
               timeout_s: float = 600.0, sandbox: Sandbox | None = None) -> list[SmokeResult]:
    """One short run per lane, all at once; returns when every one has ended."""
    budget = budget or SMOKE_BUDGET_S["cpu" if all(g.index is None for g in gpus) else "gpu"]
    Workspace(repo, "doctor", ())  # checks the repository, and keeps .autoresearch/ out of git status
    logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="smoke-", dir=logs) as scratch:
        results: dict[int, RunResult] = {}
        done = threading.Event()
        lock = threading.Lock()
        threads = max(1, (os.cpu_count() or 1) // len(gpus))
        trees = []
        for gpu in gpus:
            tree = Path(scratch) / f"lane-{gpu.lane}"
            subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), "HEAD"], cwd=repo, check=True,
                           capture_output=True)
            trees.append(tree)

        def finished(result: RunResult) -> None:
            with lock:
                results[result.lane] = result
                if len(results) == len(gpus):
                    done.set()

        try:
            for gpu, tree in zip(gpus, trees):
                env = child_environment(dict(os.environ), visible_devices=gpu.visible_devices, threads=threads,
                                        compile_cache=logs / "compile-cache", budget=budget)
                spec = RunSpec(experiment_id=0, lane=gpu.lane, argv=target_command(command), cwd=tree, env=env,
                               log_path=logs / f"smoke-lane{gpu.lane}.log", timeout_s=timeout_s,
                               hung_s=min(timeout_s, 600.0), kill_grace_s=5.0,
                               confinement=Confinement(tree, (logs / "compile-cache",), gpu))
                LocalExecutor(sandbox).start(spec, on_progress=lambda points: None, on_done=finished)
            done.wait(timeout_s + 30)
        finally:
            for tree in trees:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=repo, capture_output=True)
    return [SmokeResult(gpu, results.get(gpu.lane) or _no_result(gpu, timeout_s), budget,
                        logs / f"smoke-lane{gpu.lane}.log") for gpu in gpus]


def _no_result(gpu: Gpu, timeout_s: float) -> RunResult:
    return RunResult(experiment_id=0, lane=gpu.lane, status=Status.TIMEOUT, exit_code=None,
                     error=f"no result within {timeout_s:.0f} s")

"""Benchmark of the training child's sandbox (scheduler/runs/sandbox.py): what does confining a run
with bubblewrap add to its start-up?

    python bench/bench_sandbox.py [--runs 30]

Starts runs through the real executor (scheduler/runs/executor.py: setpriv, Popen, the watcher
thread), alternating sandboxed and unconfined so that both see the same machine load, and
times each from the moment before the executor is asked to start it to:

  [a] `true` ending: the sandbox's own cost (namespaces, mounts) with nothing to start;
  [b] the first line of a Python child (what a trainer's start-up looks like before torch).

The lane busy fraction with the sandbox is `bench/bench_engine.py --part 1 --T 30 --sandbox
bwrap` (against `--sandbox none`). Prints medians, p90s and the difference, with the target
(< 100 ms added per run), then exits 0 unless it crashes. See bench/README.md."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scheduler.runs.executor import RunHandle, RunSpec, child_environment  # noqa: E402
from scheduler.runs.sandbox import Confinement, SandboxMode, SandboxUnavailable, choose  # noqa: E402

TARGET_ADDED_MS = 100.0
# The child prints its clock first thing: CLOCK_MONOTONIC is system-wide, so it compares with ours.
FIRST_LINE = "import time; print(repr(time.monotonic()), flush=True)"


def one_run(argv: list[str], work: Path, sandbox, first_line: bool) -> float:
    """Seconds from asking for the run to its end ([a]) or to its first line of code ([b])."""
    done = threading.Event()
    results = []
    env = child_environment(dict(os.environ), visible_devices="", threads=1, compile_cache=work / "cache",
                            budget=None)
    spec = RunSpec(0, 0, argv, work, env, work / "run.log", timeout_s=60, hung_s=60, kill_grace_s=2,
                   metric="val_bpb", confinement=Confinement(work, (work / "cache",)))
    (work / "run.log").unlink(missing_ok=True)
    t0 = time.monotonic()
    RunHandle(spec, lambda points: None, lambda r: (results.append(time.monotonic()), done.set()), sandbox)
    if not done.wait(60):
        raise RuntimeError("a run did not end within 60 s")
    if first_line:
        return float((work / "run.log").read_text().split()[0]) - t0
    return results[0] - t0


def measure(runs: int, argv: list[str], work: Path, sandbox, first_line: bool) -> tuple[list[float], list[float]]:
    plain, confined = [], []
    for _ in range(2):  # warm both paths (page cache, the first fork of a big process)
        one_run(argv, work, None, first_line)
        one_run(argv, work, sandbox, first_line)
    for i in range(runs):
        order = ((None, plain), (sandbox, confined)) if i % 2 == 0 else ((sandbox, confined), (None, plain))
        for box, out in order:
            out.append(one_run(argv, work, box, first_line))
    return plain, confined


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=30, help="runs of each kind (default 30)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sandbox-") as tmp:
        work = Path(tmp) / "worktree"
        work.mkdir()
        try:
            choice = choose(SandboxMode.BWRAP, Path(tmp))
        except SandboxUnavailable as e:
            print(f"bench_sandbox: {e}", file=sys.stderr)
            return 2
        sandbox = choice.sandbox
        print(f"machine : {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}")
        print(f"sandbox : {choice.summary}, {len(sandbox.readable)} read-only path(s) put back over the hidden "
              f"home and /tmp; {args.runs} runs of each kind, alternating")
        rows = []
        for label, argv, first_line in (("[a] `true`, start to end", ["true"], False),
                                        ("[b] python, start to first line", [sys.executable, "-c", FIRST_LINE], True)):
            plain, confined = measure(args.runs, argv, work, sandbox, first_line)
            added = statistics.median(confined) - statistics.median(plain)
            print(f"\n{label}")
            print(f"  unconfined: median {statistics.median(plain) * 1000:6.1f} ms, p90 {p90(plain) * 1000:6.1f} ms")
            print(f"  sandboxed : median {statistics.median(confined) * 1000:6.1f} ms, "
                  f"p90 {p90(confined) * 1000:6.1f} ms")
            print(f"  added     : median {added * 1000:6.1f} ms, p90 {(p90(confined) - p90(plain)) * 1000:6.1f} ms, "
                  f"ratio {statistics.median(confined) / statistics.median(plain):.2f}x")
            rows.append((f"{label}: added (median)", f"{added * 1000:.1f} ms", f"< {TARGET_ADDED_MS:.0f} ms",
                         "PASS" if added * 1000 < TARGET_ADDED_MS else "MISS"))
        print(f"\n{'figure':<48} {'value':>10} {'target':>10} {'':>5}")
        for row in rows:
            print(f"{row[0]:<48} {row[1]:>10} {row[2]:>10} {row[3]:>5}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

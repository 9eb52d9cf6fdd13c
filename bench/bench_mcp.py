"""Benchmark of the MCP server for external agents (external/): how soon does a submitted change
start training, and what do polling agents cost the supervisor?

    python bench/bench_mcp.py [--submits 10] [--D 20] [--clients 8]

Runs the real command line (`--no-ui --agent external`, CPU lanes, the tests' stdlib trainer,
real git and DuckDB) and real MCP clients (the official SDK over streamable HTTP, with the
session's token).

[1] Latency: one lane, idle and waiting for an agent. A client claims it, edits train.py, and
    calls submit_experiment; a second client polls research_status every 10 ms until the
    experiment shows as running on the lane. Reported: submit call to its reply (the change
    checked, committed and queued), and submit call to the run started. Target < 1 s.
[2] Supervisor CPU: the supervisor's own CPU time (utime + stime from /proc) over D seconds with
    no client, then with N clients each calling research_status once a second. Target: less
    than 2% of a core more.

Prints the figures and a table with PASS/MISS; exits 0 unless it crashes. See bench/README.md."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fake_research import make_repo, set_constants  # noqa: E402
from mcp_lab import Supervisor, connect  # noqa: E402

TARGET_START_S = 1.0
TARGET_CPU_PCT = 2.0
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (children not included)


async def until_idle(watcher, lane: int, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        status = await watcher.call("research_status")
        info = status["lanes"][lane]
        if info["running"] is None and info["waiting_for_agent"]:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"lane {lane} never became idle")


async def latency(lab: Supervisor, submits: int) -> tuple[list[float], list[float]]:
    replies, starts = [], []
    async with connect(lab.url, lab.token, "bench-agent") as agent, connect(lab.url, lab.token, "bench-watch") as watch:
        for i in range(submits):
            await until_idle(watch, 0)
            claim = await agent.call("claim_lane", wait_s=60)
            set_constants(Path(claim["worktree"]) / "train.py", VALUE=1.0 + 0.01 * (i + 1))  # worse: discarded
            t0 = time.monotonic()
            sent = await agent.call("submit_experiment", lane=claim["lane"], description=f"VALUE +{i + 1}")
            replies.append(time.monotonic() - t0)
            while True:
                running = (await watch.call("research_status"))["lanes"][0]["running"]
                if running and running["experiment_id"] == sent["experiment_id"]:
                    starts.append(time.monotonic() - t0)
                    break
                await asyncio.sleep(0.01)
            await agent.call("wait_for_result", experiment_id=sent["experiment_id"], timeout_s=120)
    return replies, starts


async def pollers(lab: Supervisor, clients: int, seconds: float) -> int:
    calls = 0

    async def one(n: int) -> None:
        nonlocal calls
        async with connect(lab.url, lab.token, f"poller-{n}") as agent:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                await agent.call("research_status")
                calls += 1
                await asyncio.sleep(1.0)

    await asyncio.gather(*(one(n) for n in range(clients)))
    return calls


def measure_cpu(lab: Supervisor, seconds: float, clients: int) -> tuple[float, int]:
    before, t0 = cpu_seconds(lab.proc.pid), time.monotonic()
    calls = asyncio.run(pollers(lab, clients, seconds)) if clients else 0
    if not clients:
        time.sleep(seconds)
    return 100.0 * (cpu_seconds(lab.proc.pid) - before) / (time.monotonic() - t0), calls


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--submits", type=int, default=10, help="submissions timed in [1] (default 10)")
    ap.add_argument("--D", type=float, default=20.0, help="seconds of each CPU measurement in [2] (default 20)")
    ap.add_argument("--clients", type=int, default=8, help="polling clients in [2] (default 8)")
    args = ap.parse_args()
    print(f"machine : {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-mcp-") as tmp:
        lab = Supervisor(make_repo(Path(tmp) / "one-lane"), "--sandbox", "none", lanes=1)
        try:
            replies, starts = asyncio.run(latency(lab, args.submits))
        finally:
            lab.stop()
        print(f"\n[1] submit_experiment on an idle lane, {len(starts)} times")
        print(f"  reply (checked, committed, queued): median {statistics.median(replies) * 1000:.0f} ms, "
              f"p90 {p90(replies) * 1000:.0f} ms, max {max(replies) * 1000:.0f} ms")
        print(f"  run started:                        median {statistics.median(starts) * 1000:.0f} ms, "
              f"p90 {p90(starts) * 1000:.0f} ms, max {max(starts) * 1000:.0f} ms")
        rows.append(("[1] submit -> run started, max", f"{max(starts) * 1000:.0f} ms", "< 1 s",
                     "PASS" if max(starts) < TARGET_START_S else "MISS"))

        lab = Supervisor(make_repo(Path(tmp) / "polled"), "--sandbox", "none", lanes=2)
        try:
            time.sleep(3)  # past the baselines: both lanes wait for an agent
            quiet, _ = measure_cpu(lab, args.D, 0)
            busy, calls = measure_cpu(lab, args.D, args.clients)
        finally:
            lab.stop()
        print(f"\n[2] supervisor CPU over {args.D:g} s, 2 lanes waiting for agents")
        print(f"  no client:                   {quiet:.2f}% of a core")
        print(f"  {args.clients} clients polling at 1 Hz:  {busy:.2f}% of a core ({calls} research_status calls)")
        rows.append((f"[2] CPU added by {args.clients} pollers", f"{busy - quiet:.2f}%", "< 2% core",
                     "PASS" if busy - quiet < TARGET_CPU_PCT else "MISS"))
    print(f"\n{'figure':<40} {'value':>10} {'target':>10}")
    for label, value, target, verdict in rows:
        print(f"{label:<40} {value:>10} {target:>10} {verdict:>5}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

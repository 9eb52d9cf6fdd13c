"""What the LLM agents cost and how their calls overlap, in a real headless run.

    python bench/bench_agents.py [--provider openai|anthropic] [--lanes 2] [--experiments 10] [--latency 0.5]

Runs `autoresearch-tui --no-ui` (the real CLI, in its own process) on a small research repo
(tests/fake_research.py: a trainer that sleeps and prints the run contract) with the real SDK
talking to a loopback server (tests/llm_servers.py) whose scripted model answers after
`--latency` seconds per call. Then reads the run's DuckDB file and reports, per proposal, the
LLM calls, tokens and wall time, and how many calls were in flight at once across lanes.
Figures, not assertions; exits 0 unless it crashes."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import duckdb  # noqa: E402

from fake_research import make_repo, set_constants  # noqa: E402
from llm_servers import AnthropicServer, OpenAIServer, Slow, Text, ToolCalls  # noqa: E402


class Researcher:
    """Sets VALUE lower each proposal, then submits; answers memory and orchestrator calls."""

    def __init__(self, latency: float):
        self.latency = latency
        self.proposals = 0
        self.lock = threading.Lock()

    def __call__(self, body):
        tools = {t.get("name") or t.get("function", {}).get("name") for t in body.get("tools") or []}
        if not tools:
            return Slow(self.latency, Text("Lowering VALUE lowered val_bpb."))
        if "assign" in tools:
            return Slow(self.latency, ToolCalls([("assign", {"directions": [{"lane": 0, "direction": "VALUE"}]})]))
        results = sum(1 for m in body["messages"] if m.get("role") == "tool" or (
            isinstance(m.get("content"), list) and any(b.get("type") == "tool_result" for b in m["content"])))
        if results == 0:
            return Slow(self.latency, ToolCalls([("read_file", {"path": "train.py", "start_line": 1, "end_line": 10})]))
        if results == 1:
            with self.lock:  # each proposal a value of its own, whichever lane asks
                self.proposals += 1
                value = f"{0.99 - 0.003 * self.proposals:.3f}"
            return Slow(self.latency, ToolCalls([("set_hyperparameters", {"values": {"VALUE": value}})]))
        return Slow(self.latency, ToolCalls([("submit", {"description": "lower VALUE", "hypothesis": "it is the result"})]))


def in_flight_max(intervals: list[tuple[float, float]]) -> int:
    points = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    best = now = 0
    for _, step in points:
        now += step
        best = max(best, now)
    return best


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--provider", choices=("openai", "anthropic"), default="openai")
    parser.add_argument("--lanes", type=int, default=2)
    parser.add_argument("--experiments", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.5, help="seconds the fake model takes per call")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds each fake training run takes")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-agents-"))
    repo = make_repo(work / "repo")
    set_constants(repo / "train.py", DURATION=args.duration, STEP_COUNT=10)
    subprocess.run(["git", "commit", "-qam", "slower runs"], cwd=repo, check=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
                        "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"})
    db = work / "log.duckdb"
    model = "gpt-4.1-mini" if args.provider == "openai" else "claude-haiku-4-5"
    server_class = OpenAIServer if args.provider == "openai" else AnthropicServer
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": "bench-key", "ANTHROPIC_API_KEY": "bench-key"}
    with server_class(Researcher(args.latency)) as server:
        argv = [sys.executable, "-m", "scheduler.cli", "--no-ui", "--gpus", f"cpu:{args.lanes}", "--repo", str(repo),
                "--tag", "bench", "--editable", "train.py", "--command", "python train.py", "--budget", "5",
                "--db", str(db), "--agent", f"{args.provider}:{model}", "--base-url", server.base_url,
                "--max-experiments", str(args.experiments)]
        started = time.monotonic()
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        wall = time.monotonic() - started
        server_overlap = server.in_flight_max
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        return 1
    con = duckdb.connect(str(db), read_only=True)
    calls = con.execute("SELECT role, outcome, input_tokens, output_tokens, cost_usd, latency_ms, experiment_id, "
                        "lane, epoch_ms(t) FROM llm_calls ORDER BY t").fetchall()
    proposals = {r[0]: r[1] for r in con.execute(
        "SELECT id, status FROM experiments WHERE kind = 'proposal'").fetchall()}
    runs = con.execute("SELECT lane, epoch_ms(started_at), epoch_ms(finished_at) FROM experiments "
                       "WHERE started_at IS NOT NULL AND finished_at IS NOT NULL").fetchall()
    con.close()

    by_exp: dict[int, list] = {}
    for c in calls:
        if c[0] == "worker" and c[6] in proposals:
            by_exp.setdefault(c[6], []).append(c)
    per_calls = [len(v) for v in by_exp.values()]
    per_in = [sum(c[2] or 0 for c in v) for v in by_exp.values()]
    per_out = [sum(c[3] or 0 for c in v) for v in by_exp.values()]
    per_wall = [(max(c[8] for c in v) - min(c[8] - c[5] for c in v)) / 1000 for v in by_exp.values()]
    intervals = [((c[8] - c[5]) / 1000, c[8] / 1000) for c in calls]
    by_role = {}
    for c in calls:
        by_role[c[0]] = by_role.get(c[0], 0) + 1
    # LLM time hidden behind training: a worker call that ran while its lane had a run going
    hidden = 0.0
    total = 0.0
    for c in calls:
        if c[0] != "worker":
            continue
        a, b = (c[8] - c[5]) / 1000, c[8] / 1000
        total += b - a
        for lane, s, f in runs:
            if lane == c[7]:
                hidden += max(0.0, min(b, f / 1000) - max(a, s / 1000))
    cost = sum(c[4] or 0 for c in calls)

    print(f"provider {args.provider} ({model}) via {server.base_url}; {args.lanes} lanes; "
          f"fake model latency {args.latency} s/call; runs of {args.duration} s; wall {wall:.1f} s")
    print(f"proposals: {len(by_exp)} ({sum(1 for s in proposals.values() if s == 'ok')} ran ok)")
    print(f"LLM calls: {len(calls)} in all, by role {by_role}")
    print(f"per proposal: calls median {statistics.median(per_calls):.0f} (min {min(per_calls)}, max {max(per_calls)}); "
          f"tokens in median {statistics.median(per_in):,.0f}, out median {statistics.median(per_out):,.0f}; "
          f"wall median {statistics.median(per_wall):.2f} s (max {max(per_wall):.2f} s)")
    print(f"cost: ${cost:.4f} (price table: agents/prices.py; the fake server's token counts are ~bytes/4)")
    print(f"calls in flight at once: max {in_flight_max(intervals)} (from llm_calls rows), "
          f"{server_overlap} (seen by the server)")
    print(f"worker LLM time spent while the lane's GPU was training: {hidden:.1f} s of {total:.1f} s "
          f"({100 * hidden / total if total else 0:.0f}%)")
    print(json.dumps({"calls": len(calls), "per_proposal_calls": statistics.median(per_calls),
                      "per_proposal_wall_s": statistics.median(per_wall), "in_flight_max": in_flight_max(intervals)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

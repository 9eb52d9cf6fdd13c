"""What the LLM agents cost and how their calls overlap, in a real headless run.

    python bench/bench_agents.py [--provider openai|anthropic] [--lanes 2] [--experiments 10] [--latency 0.5]
                                 [--trainer fake|real] [--window TOKENS] [--engine DIR]

Runs `autoresearch-tui --no-ui` (the real CLI, in its own process) on a small research repo
with the real SDK talking to a loopback server (tests/llm_servers.py) whose scripted model
answers after `--latency` seconds per call. Then reads the run's DuckDB file and reports, per
proposal, the LLM calls, tokens and wall time, and how many calls were in flight at once.

`--trainer fake` edits tests/fake_research.py's small trainer (a file of ~1.5k characters);
`--trainer real` edits this repository's trainer/train.py (~27k characters, what a real night
sends), run by a stand-in that sleeps and prints the run contract from its MATRIX_LR.
`--window N` lists the model with an N-token context window (as vLLM does) and passes
`--context-tokens N`; without it the server does not say, and the engine assumes a small
local window. `--engine DIR` runs another checkout's CLI (to compare before and after).
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


STAND_IN = """\
import math, re, sys, time
source = open("train.py").read()
lr = float(re.search(r"^MATRIX_LR = ([0-9.e-]+)", source, re.M).group(1))
time.sleep(float(sys.argv[1]))
print("---")
print(f"val_bpb:          {1.0 + 0.05 * math.log(lr / 0.03) ** 2:.6f}")
for key, value in (("training_seconds", 1.0), ("total_seconds", 1.1), ("peak_vram_mb", 1024.0),
                   ("mfu_percent", 1.0), ("total_tokens_M", 0.1), ("num_steps", 10), ("num_params_M", 1.0),
                   ("depth", 2)):
    print(f"{key}: {value}")
"""


def real_repo(root: Path) -> Path:
    """This repository's trainer as the file the agents edit, run by a stand-in."""
    return make_repo(root, {"train.py": (ROOT / "trainer" / "train.py").read_text(), "stand_in.py": STAND_IN,
                            "prepare.py": "# the fixed harness\n"})


class Researcher:
    """Sets VALUE (or the real trainer's MATRIX_LR) lower each proposal, then submits; answers
    memory and orchestrator calls."""

    def __init__(self, latency: float, knob: str = "VALUE"):
        self.knob = knob
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
                value = (f"{0.99 - 0.003 * self.proposals:.3f}" if self.knob == "VALUE"
                         else f"{0.04 - 0.0004 * self.proposals:.4f}")
            return Slow(self.latency, ToolCalls([("set_hyperparameters", {"values": {self.knob: value}})]))
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
    parser.add_argument("--trainer", choices=("fake", "real"), default="fake",
                        help="the file the agents edit: the small fake trainer, or this repository's trainer")
    parser.add_argument("--window", type=int, metavar="TOKENS",
                        help="the model's context window, as the server lists it and --context-tokens says")
    parser.add_argument("--engine", type=Path, default=ROOT, metavar="DIR",
                        help="the checkout whose CLI runs (default: this one)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-agents-"))
    if args.trainer == "real":
        repo = real_repo(work / "repo")
        command = f"python stand_in.py {args.duration}"
    else:
        repo = make_repo(work / "repo")
        set_constants(repo / "train.py", DURATION=args.duration, STEP_COUNT=10)
        subprocess.run(["git", "commit", "-qam", "slower runs"], cwd=repo, check=True,
                       env={**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
                            "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"})
        command = "python train.py"
    db = work / "log.duckdb"
    model = "gpt-4.1-mini" if args.provider == "openai" else "claude-haiku-4-5"
    server = (OpenAIServer(Researcher(args.latency, "VALUE" if args.trainer == "fake" else "MATRIX_LR"),
                           max_model_len=args.window) if args.provider == "openai"
              else AnthropicServer(Researcher(args.latency, "VALUE" if args.trainer == "fake" else "MATRIX_LR")))
    env = {**os.environ, "PYTHONPATH": str(args.engine), "OPENAI_API_KEY": "bench-key",
           "ANTHROPIC_API_KEY": "bench-key"}
    with server:
        argv = [sys.executable, "-m", "autoresearch_tui.cli", "--no-ui", "--gpus", f"cpu:{args.lanes}", "--repo", str(repo),
                "--tag", "bench", "--editable", "train.py", "--command", command, "--budget", "5",
                "--db", str(db), "--agent", f"{args.provider}:{model}", "--base-url", server.base_url,
                "--max-experiments", str(args.experiments)]
        if args.window:
            argv += ["--context-tokens", str(args.window)]
        started = time.monotonic()
        proc = subprocess.run(argv, cwd=args.engine, env=env, capture_output=True, text=True, timeout=900)
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
    first_call = next((c[2] for c in calls if c[0] == "worker" and c[1] == "ok"), None)

    print(f"provider {args.provider} ({model}) via {server.base_url}; {args.lanes} lanes; "
          f"fake model latency {args.latency} s/call; runs of {args.duration} s; wall {wall:.1f} s")
    print(f"proposals: {len(by_exp)} ({sum(1 for s in proposals.values() if s == 'ok')} ran ok)")
    print(f"LLM calls: {len(calls)} in all, by role {by_role}")
    print(f"per proposal: calls median {statistics.median(per_calls):.0f} (min {min(per_calls)}, max {max(per_calls)}); "
          f"tokens in median {statistics.median(per_in):,.0f}, out median {statistics.median(per_out):,.0f}; "
          f"wall median {statistics.median(per_wall):.2f} s (max {max(per_wall):.2f} s)")
    print(f"cost: ${cost:.4f} (prices: genai-prices; the fake server's token counts are ~bytes/4)")
    print(f"first worker call: {first_call:,} tokens in" if first_call else "first worker call: none")
    print(f"calls in flight at once: max {in_flight_max(intervals)} (from llm_calls rows), "
          f"{server_overlap} (seen by the server)")
    print(f"worker LLM time spent while the lane's GPU was training: {hidden:.1f} s of {total:.1f} s "
          f"({100 * hidden / total if total else 0:.0f}%)")
    print(json.dumps({"calls": len(calls), "per_proposal_calls": statistics.median(per_calls),
                      "first_call_tokens": first_call, "per_proposal_tokens_in": statistics.median(per_in),
                      "per_proposal_wall_s": statistics.median(per_wall), "in_flight_max": in_flight_max(intervals)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

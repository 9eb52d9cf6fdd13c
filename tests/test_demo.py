"""The README's first command, headless: real training on two CPU lanes with the offline
mutator, ending with research a person can check -- keeps, discards, and a frontier branch
that says the same as the log."""

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parent.parent


def test_the_headless_demo_keeps_and_discards_and_the_frontier_agrees_with_the_log(tiny_cache, tmp_path):
    # Half the demo's 30 steps a run: the same research in half the time (CI runs on two cores).
    env = {**os.environ, "AUTORESEARCH_CACHE": str(tiny_cache), "PYTHONPATH": str(ROOT),
           "AUTORESEARCH_STEP_BUDGET": "15"}
    # 8 runs (the demo's default): two baselines and six proposals, so the mutator's random
    # choice of which rates to move and which way almost surely includes both directions.
    result = subprocess.run([sys.executable, "-m", "autoresearch_tui.cli", "--demo", "--no-ui", "--max-experiments", "8"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    events = [json.loads(line) for line in result.stdout.splitlines()]
    # 8, and any confirmation or verification still needed to judge them
    assert events[-1]["event"] == "finished" and events[-1]["experiments"] >= 8
    # it ends with its claim: the frontier against the start, side by side (runs of fixed steps
    # measure the same every time: two each, and no spread)
    (claim,) = [e["claim"] for e in events if e["event"] == "claim"]
    assert events[-1]["detail"]["claim"] == f"improved val_bpb by {claim['gain']:.4f} (2 vs 2 runs, each side " \
                                            f"measuring the same every time: no noise)"
    assert claim["gain"] > 0 and claim["heldout"]["gain"] > 0 and claim["heldout"]["warning"] is None
    # where bubblewrap works the demo's runs are confined by default, and it says which
    from scheduler.runs.sandbox import SandboxMode, choose
    started = next(e["message"] for e in events if e["event"] == "notice" and " started " in f" {e['message']}")
    sandboxed = choose(SandboxMode.AUTO, tmp_path).active
    assert ("training runs sandboxed (bubblewrap" in started) is sandboxed, started
    if os.environ.get("AUTORESEARCH_REQUIRE_SANDBOX"):
        assert sandboxed

    demo = tmp_path / ".autoresearch" / "demo"
    con = duckdb.connect(str(demo / "results.duckdb"), read_only=True)
    decided = con.execute("SELECT kind, decision, \"commit\", val_bpb FROM experiments "
                          "WHERE decision IS NOT NULL AND kind != 'baseline' ORDER BY id").fetchall()
    (tag,) = con.execute("SELECT tag FROM runs").fetchone()
    frontier_moves = con.execute("SELECT json_extract_string(detail, '$.commit') FROM events "
                                 "WHERE kind = 'frontier' ORDER BY id").fetchall()
    con.close()
    assert any(d == "keep" for _, d, _, _ in decided) and any(d == "discard" for _, d, _, _ in decided)
    assert all(v is not None and 0.2 < v < 3.0 for _, _, _, v in decided)  # real val_bpb from real training

    repo = demo / "repo"
    tip = subprocess.run(["git", "rev-parse", f"autoresearch/{tag}"], cwd=repo, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert frontier_moves and frontier_moves[-1][0] == tip  # the log's last promotion is the branch tip
    for _, decision, commit, _ in decided:
        if decision == "keep":  # every kept change is in the frontier's history
            assert subprocess.run(["git", "merge-base", "--is-ancestor", commit, tip], cwd=repo).returncode == 0

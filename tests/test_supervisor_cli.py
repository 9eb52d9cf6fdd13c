"""The supervisor as a user runs it: `autoresearch-tui --no-ui` in its own process, on a real
repository, killed, resumed, doubled, and given bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from fake_research import make_repo, set_constants

ROOT = Path(__file__).resolve().parent.parent
# Runs the real entry point and then proves the headless path never loaded the TUI toolkit.
ENTRY = ("import sys; from autoresearch_tui.cli import main; rc = main(sys.argv[1:]); "
         "assert 'textual' not in sys.modules, 'textual was imported'; sys.exit(rc)")


def command(repo, *extra, tag="t", db=None):
    """Two baselines, one per lane, unless a test says otherwise: the fake trainer has no noise
    for the default four to estimate, and these tests are about the command line. No claim at
    the end unless a test asks (--confirm N): tests/test_confirmation.py is about it."""
    baselines = () if "--baseline-runs" in extra else ("--baseline-runs", "2")
    claim = () if "--confirm" in extra else ("--no-confirm",)
    return [sys.executable, "-c", ENTRY, "--no-ui", "--gpus", "cpu:2", "--repo", str(repo), "--tag", tag,
            "--editable", "train.py", "--command", "python train.py", "--budget", "1",
            "--db", str(db or repo.parent / "log.duckdb"), *baselines, *claim, *extra]


def start(argv):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def events_until(proc, predicate, limit=60.0):
    seen, deadline = [], time.monotonic() + limit
    for line in proc.stdout:
        seen.append(json.loads(line))
        if predicate(seen[-1]):
            return seen
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"never saw the event; last: {seen[-3:]}")


def rows(db, sql):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_headless_output_is_json_lines_and_never_imports_textual(tmp_path):
    repo = make_repo(tmp_path / "repo")
    result = subprocess.run(command(repo, "--max-experiments", "4"), cwd=ROOT, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    parsed = [json.loads(line) for line in lines]  # every line is one JSON object
    names = [p["event"] for p in parsed]
    assert names[-1] == "finished" and names.count("run_finished") == names.count("run_started") >= 4
    kinds = [p["experiment"]["kind"] for p in parsed if p["event"] == "run_started"]
    assert all(kind in ("confirm", "verification") for kind in kinds[4:])  # judging the 4, past the budget
    assert {"lane", "run_started", "progress", "decision"} <= set(names)
    assert "lane 0: #1 baseline started" in result.stderr  # the human log goes to stderr


def test_kill_9_mid_run_then_resume_loses_and_duplicates_nothing(tmp_path):
    repo = make_repo(tmp_path / "repo")
    set_constants(repo / "train.py", DURATION=3.0)
    git(repo, "commit", "-qam", "slower runs", "--author", "t <t@t>")
    db = tmp_path / "log.duckdb"
    first = start(command(repo, "--max-experiments", "20", db=db))
    seen = events_until(first, lambda e: e["event"] == "run_started" and e["experiment"]["kind"] == "proposal")
    victim, child = seen[-1]["experiment"]["id"], seen[-1]["pid"]
    first.send_signal(signal.SIGKILL)
    first.wait()
    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(child), "the training child outlived its supervisor"
    frontier_before = git(repo, "rev-parse", "autoresearch/t")

    second = subprocess.run(command(repo, "--max-experiments", "3", db=db), cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert second.returncode == 0, second.stderr[-3000:]
    assert "queued again" in second.stderr
    ids = [r[0] for r in rows(db, "SELECT id FROM experiments")]
    assert len(ids) == len(set(ids))
    status = dict(rows(db, "SELECT id, status FROM experiments"))
    assert status[victim] == "interrupted"
    reruns = rows(db, f"SELECT status FROM experiments WHERE rerun_of = {victim}")
    assert reruns == [("ok",)]  # run again exactly once
    # the starting point is measured twice in all, however the sessions split the work (a kept
    # change's frontier gets replicas of its own, which lane timing may or may not reach)
    origin = git(repo, "rev-parse", "main")
    assert rows(db, "SELECT count(*) FROM experiments WHERE kind = 'baseline' AND status = 'ok' "
                    f"AND \"commit\" = '{origin}'") == [(2,)]
    assert rows(db, "SELECT count(*) FROM experiments WHERE status = 'running'") == [(0,)]
    # the frontier only ever moved forward from where the killed session left it
    tip = git(repo, "rev-parse", "autoresearch/t")
    assert subprocess.run(["git", "merge-base", "--is-ancestor", frontier_before, tip], cwd=repo).returncode == 0
    kept = rows(db, "SELECT \"commit\" FROM experiments WHERE decision = 'keep' AND kind != 'baseline' ORDER BY id")
    assert not kept or kept[-1][0] == tip


def test_a_second_supervisor_is_refused_and_sigint_lets_runs_finish(tmp_path):
    repo = make_repo(tmp_path / "repo")
    set_constants(repo / "train.py", DURATION=2.0)
    git(repo, "commit", "-qam", "slower runs", "--author", "t <t@t>")
    first = start(command(repo, "--max-experiments", "50"))
    try:
        events_until(first, lambda e: e["event"] == "run_started")
        second = subprocess.run(command(repo, db=tmp_path / "other.duckdb"), cwd=ROOT, capture_output=True,
                                text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert second.returncode == 2
        assert "another supervisor" in second.stderr and len(second.stderr.strip().splitlines()) == 1
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode == 0, err[-2000:]
    finished = [json.loads(line) for line in out.splitlines() if '"run_finished"' in line]
    assert finished and all(e["experiment"]["status"] == "ok" for e in finished)  # not cut short
    assert json.loads(out.splitlines()[-1])["event"] == "finished"


def test_a_frontier_that_fails_stops_the_research_with_exit_1(tmp_path):
    repo = make_repo(tmp_path / "repo")
    set_constants(repo / "train.py", MODE="crash")
    git(repo, "commit", "-qam", "broken", "--author", "t <t@t>")
    result = subprocess.run(command(repo, "--max-experiments", "10"), cwd=ROOT, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 1
    assert "fails to run" in result.stderr and "exploded" in result.stderr


@pytest.mark.parametrize("extra,words", [
    (["--gpus", "banana"], "--gpus must be"),
    (["--config", "/nonexistent/autoresearch.toml"], "does not exist"),
    (["--budget", "-5"], "budget must be a positive number"),
    (["--agent", "gemini"], "--agent must be"),
    (["--tag", "no spaces"], "--tag"),
])
def test_bad_input_gets_one_sentence_and_exit_2(tmp_path, extra, words):
    repo = make_repo(tmp_path / "repo")
    argv = command(repo) + extra
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2, result.stderr
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_folder_that_is_not_a_repository_is_refused(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    result = subprocess.run(command(plain), cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2 and "not a git repository" in result.stderr
    assert not (plain / ".autoresearch" / "worktrees").exists()

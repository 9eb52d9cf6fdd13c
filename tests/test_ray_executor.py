"""`--executor ray` on a real local Ray cluster: a head node with two logical GPUs started once
for this module (and a worker node a test adds and then kills), the engine tests' fake trainer,
real git, a real DuckDB file. Skipped where Ray is not installed (CI installs it)."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest

ray = pytest.importorskip("ray")

from fake_research import make_repo, set_constants  # noqa: E402
from results.records import Status  # noqa: E402
from scheduler.executor import RunSpec, child_environment  # noqa: E402
from test_supervisor_cli import ROOT  # noqa: E402

RAY = str(Path(sys.executable).with_name("ray"))
# Fast failure detection, so a killed node is declared dead in seconds, not half a minute.
RAY_ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_health_check_period_ms": "500",
           "RAY_health_check_failure_threshold": "4", "RAY_health_check_initial_delay_ms": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    port = free_port()
    subprocess.run([RAY, "start", "--head", "--port", str(port), "--num-cpus", "6", "--num-gpus", "2",
                    "--include-dashboard=false", "--disable-usage-stats"], env=RAY_ENV, check=True,
                   capture_output=True, timeout=120)
    yield f"127.0.0.1:{port}"
    subprocess.run([RAY, "stop", "--force"], env=RAY_ENV, capture_output=True, timeout=120)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def commit_trainer(root: Path, **constants) -> Path:
    repo = make_repo(root)
    if constants:
        set_constants(repo / "train.py", **constants)
        subprocess.run(["git", "commit", "-qam", "mode"], cwd=repo, check=True,
                       env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})
    return repo


def test_a_headless_night_on_the_cluster_runs_on_rays_cards_without_secrets_and_judges_as_locally(cluster, tmp_path):
    repo = make_repo(tmp_path / "repo")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": "sk-hunter2", "HF_TOKEN": "hunter2-token"}
    done = subprocess.run([sys.executable, "-m", "scheduler.cli", "--no-ui", "--executor", "ray", "--ray-address",
                           cluster, "--repo", str(repo), "--tag", "t", "--editable", "train.py", "--command",
                           "python train.py", "--budget", "1", "--baseline-runs", "2", "--max-experiments", "8"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    events = [json.loads(line) for line in done.stdout.splitlines()]
    con = duckdb.connect(str(repo / ".autoresearch" / "results.duckdb"), read_only=True)
    runs = con.execute("SELECT id, lane, kind, status, decision, json_extract_string(extra, '$.cuda_visible'), "
                       "json_extract_string(extra, '$.leaked'), json_extract_string(extra, '$.cwd') "
                       "FROM experiments WHERE status = 'ok'").fetchall()
    con.close()
    assert len(runs) >= 8
    by_lane = {}
    for _, lane, _, _, _, visible, leaked, cwd in runs:
        by_lane.setdefault(lane, set()).add(visible)
        assert leaked == "[]"  # no secret reached the node's child
        assert "/autoresearch-ray/" in cwd  # a node-local folder, not the supervisor's worktree
    assert {lane: v for lane, v in by_lane.items()} == {0: {"[0]"}, 1: {"[1]"}}  # Ray's card, one per lane, always
    decisions = {d for _, _, kind, _, d, _, _, _ in runs if kind == "proposal"}
    assert {"keep", "discard"} <= decisions
    # progress reached the engine while the run was live: before its end, for every run
    for run_id, *_ in runs:
        seen = [e["event"] for e in events if e.get("experiment_id") == run_id or
                (e.get("experiment") or {}).get("id") == run_id]
        assert "progress" in seen and seen.index("progress") < seen.index("run_finished")
    assert "noise on Ray GPU" in done.stderr


@pytest.fixture
def lanes(cluster):
    from scheduler.raycluster import RayCluster

    ray_cluster = RayCluster(cluster)
    gpus = ray_cluster.lanes("2")
    yield ray_cluster, gpus
    ray_cluster.close()


def run_on(executor, repo: Path, lane: int = 0, **limits):
    results, done = [], threading.Event()
    env = child_environment(dict(os.environ), visible_devices="", threads=1, compile_cache=repo / "cache", budget=1)
    spec = RunSpec(7, lane, [sys.executable, "train.py"], repo, env, repo.parent / f"run-{repo.name}.log",
                   timeout_s=limits.get("timeout_s", 60), hung_s=limits.get("hung_s", 60), kill_grace_s=2)
    handle = executor.start(spec, lambda points: None, lambda r: (results.append(r), done.set()))
    return handle, results, done


@pytest.mark.parametrize("mode, status, says", [
    ("ok", Status.OK, None), ("crash", Status.CRASH, "exploded"), ("oom", Status.OOM, "out of memory"),
    ("nan", Status.NAN, "diverged")])
def test_every_outcome_is_classified_as_for_a_local_run(lanes, tmp_path, mode, status, says):
    ray_cluster, _ = lanes
    handle, results, done = run_on(ray_cluster.executor("python train.py"), commit_trainer(tmp_path / "r", MODE=mode))
    assert done.wait(60)
    assert results[0].status is status
    if says:
        assert says in results[0].error
    else:
        assert results[0].summary["val_bpb"] == pytest.approx(1.0)


@pytest.mark.parametrize("mode, limits, status", [
    ("hang", {}, Status.KILLED), ("stubborn", {}, Status.KILLED), ("hang", {"timeout_s": 3}, Status.TIMEOUT),
    ("hang", {"hung_s": 2}, Status.HUNG)])
def test_stopping_a_run_leaves_no_process_on_the_node(lanes, tmp_path, mode, limits, status):
    ray_cluster, _ = lanes
    handle, results, done = run_on(ray_cluster.executor("python train.py"), commit_trainer(tmp_path / "r", MODE=mode),
                                   **limits)
    deadline = time.monotonic() + 30
    while handle.pid is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert handle.pid is not None and alive(handle.pid)
    if not limits:
        time.sleep(1.0)
        handle.stop()
    assert done.wait(60)
    assert results[0].status is status
    deadline = time.monotonic() + 10
    while alive(handle.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(handle.pid)


def test_a_node_that_dies_mid_run_interrupts_its_run_and_leaves_nothing_running(cluster, tmp_path):
    from scheduler.raycluster import RayCluster

    port = free_port()
    subprocess.run([RAY, "start", "--address", cluster, "--num-cpus", "2", "--num-gpus", "1",
                    "--node-manager-port", str(port)], env=RAY_ENV, check=True, capture_output=True, timeout=120)
    ray_cluster = RayCluster(cluster)
    try:
        ray_cluster.lanes("3")  # two on the head, one on the new node
        worker_node = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeManagerPort"] == port)
        lane = next(i for i, info in enumerate(ray_cluster.described) if info["node_id"] == worker_node)
        handle, results, done = run_on(ray_cluster.executor("python train.py"),
                                       commit_trainer(tmp_path / "r", MODE="hang"), lane=lane)
        deadline = time.monotonic() + 30
        while handle.pid is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert handle.pid is not None and alive(handle.pid)
        # the node goes: its raylet and everything it started
        node_pids = [int(p) for p in subprocess.run(["pgrep", "-f", f"node-manager-port={port}|node_manager_port={port}"],
                                                    capture_output=True, text=True).stdout.split()]
        assert node_pids
        for pid in node_pids:
            os.kill(pid, signal.SIGKILL)
        assert done.wait(90)
        assert results[0].status is Status.INTERRUPTED and "Ray node failed" in results[0].error
        deadline = time.monotonic() + 20
        while alive(handle.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(handle.pid)
    finally:
        ray_cluster.close()


def test_when_a_node_dies_its_lane_leaves_and_its_run_is_run_again_on_another(cluster, tmp_path):
    port = free_port()
    subprocess.run([RAY, "start", "--address", cluster, "--num-cpus", "2", "--num-gpus", "1",
                    "--node-manager-port", str(port)], env=RAY_ENV, check=True, capture_output=True, timeout=120)
    repo = commit_trainer(tmp_path / "repo", DURATION=4.0)
    argv = [sys.executable, "-m", "scheduler.cli", "--no-ui", "--executor", "ray", "--ray-address", cluster,
            "--gpus", "3", "--repo", str(repo), "--tag", "t", "--editable", "train.py", "--command", "python train.py",
            "--budget", "4", "--baseline-runs", "3", "--max-experiments", "6"]
    proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        # every lane starts a baseline; then the new node goes, with its raylet and all it started
        started = set()
        for line in proc.stdout:
            event = json.loads(line)
            if event["event"] == "run_started":
                started.add(event["lane"])
            if len(started) == 3:
                break
        node_pids = [int(p) for p in subprocess.run(["pgrep", "-f", f"node-manager-port={port}|node_manager_port={port}"],
                                                    capture_output=True, text=True).stdout.split()]
        assert node_pids
        for pid in node_pids:
            os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    con = duckdb.connect(str(repo / ".autoresearch" / "results.duckdb"), read_only=True)
    interrupted = con.execute("SELECT id, lane, error FROM experiments WHERE status = 'interrupted'").fetchall()
    assert len(interrupted) == 1 and "Ray node failed" in interrupted[0][2]
    lost_id, lost_lane, _ = interrupted[0]
    again = con.execute("SELECT lane, status, kind FROM experiments WHERE rerun_of = ?", [lost_id]).fetchall()
    lanes_after = {row[0] for row in con.execute(
        "SELECT lane FROM experiments WHERE started_at > (SELECT finished_at FROM experiments WHERE id = ?)",
        [lost_id]).fetchall()}
    con.close()
    assert again == [(again[0][0], "ok", "baseline")] and again[0][0] != lost_lane  # once, elsewhere, and it ran
    assert lost_lane not in lanes_after and lanes_after  # the lane left service; the others went on
    assert f"lane {lost_lane} is out of service" in err


def test_the_headless_demo_runs_on_the_cluster_and_keeps_and_discards(cluster, tiny_cache, tmp_path):
    # The demo's own settings, with fewer steps and baselines than its default so that the test
    # takes a minute; the runs are deterministic (fixed seed and steps) on either executor.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AUTORESEARCH_CACHE": str(tiny_cache),
           "AUTORESEARCH_STEP_BUDGET": "10"}
    done = subprocess.run([sys.executable, "-m", "scheduler.cli", "--demo", "--no-ui", "--executor", "ray",
                           "--ray-address", cluster, "--baseline-runs", "2", "--max-experiments", "6"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    con = duckdb.connect(str(tmp_path / ".autoresearch" / "demo" / "results.duckdb"), read_only=True)
    rows = con.execute("SELECT kind, decision, val_bpb, gpu_name FROM experiments WHERE decision IS NOT NULL").fetchall()
    con.close()
    assert {d for kind, d, _, _ in rows if kind != "baseline"} >= {"keep", "discard"}
    assert all(0.2 < v < 4.0 for _, _, v, _ in rows)  # real training, on the nodes
    assert {g for *_, g in rows} == {"Ray GPU"}


def test_kill_9_of_the_supervisor_leaves_no_training_process_on_the_nodes(cluster, tmp_path):
    repo = commit_trainer(tmp_path / "repo", MODE="slow")
    argv = [sys.executable, "-m", "scheduler.cli", "--no-ui", "--executor", "ray", "--ray-address", cluster,
            "--repo", str(repo), "--tag", "t", "--editable", "train.py", "--command", "python train.py",
            "--budget", "1", "--baseline-runs", "2"]
    proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def trainers():  # the runs' processes, found by their node-local folders
        found = []
        for cwd in Path("/proc").glob("[0-9]*/cwd"):
            try:
                if "/autoresearch-ray/lane-" in os.readlink(cwd):
                    found.append(int(cwd.parent.name))
            except OSError:
                pass
        return found

    try:
        deadline = time.monotonic() + 60
        while len(trainers()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        running = trainers()
        assert len(running) >= 2, "both baselines should be training"
        proc.kill()
        proc.wait(30)
        deadline = time.monotonic() + 60
        while any(alive(pid) for pid in running) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not any(alive(pid) for pid in running), "a training process outlived its supervisor"
    finally:
        if proc.poll() is None:
            proc.kill()

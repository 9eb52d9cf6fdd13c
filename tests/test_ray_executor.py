"""`--executor ray` on a real local Ray cluster: a head node with two logical GPUs started once
for this module (and a worker node a test adds and then kills), the engine tests' fake trainer,
real git, a real DuckDB file. Skipped where Ray is not installed (CI installs it)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import duckdb
import pytest

ray = pytest.importorskip("ray")

from fake_research import make_repo, set_constants  # noqa: E402
from results.records import Status  # noqa: E402
from scheduler.runs.executor import RunSpec, child_environment  # noqa: E402
from test_supervisor_cli import ROOT  # noqa: E402

RAY = str(Path(sys.executable).with_name("ray"))
# Fast failure detection, so a killed node is declared dead in seconds, not half a minute.
# A secret in the nodes' own environment too: a run's environment is built on its node from the
# node's variables, and none of them may carry it.
RAY_ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_health_check_period_ms": "500",
           "RAY_health_check_failure_threshold": "4", "RAY_health_check_initial_delay_ms": "0",
           "NODE_SERVICE_TOKEN": "hunter2-on-the-node"}


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


GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, env=GIT_ENV, capture_output=True,
                          text=True).stdout.strip()


def commit_trainer(root: Path, **constants) -> Path:
    repo = make_repo(root)
    if constants:
        set_constants(repo / "train.py", **constants)
        git(repo, "commit", "-qam", "mode")
    return repo


def test_a_headless_night_on_the_cluster_runs_on_rays_cards_without_secrets_and_judges_as_locally(cluster, tmp_path):
    repo = make_repo(tmp_path / "repo")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": "sk-hunter2", "HF_TOKEN": "hunter2-token"}
    done = subprocess.run([sys.executable, "-m", "autoresearch_tui.cli", "--no-ui", "--executor", "ray", "--ray-address",
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
        assert leaked == "[]"  # no secret reached the node's child: not the supervisor's, not the node's
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
    from scheduler.cluster.raycluster import RayCluster

    ray_cluster = RayCluster(cluster)
    gpus = ray_cluster.lanes("2")
    yield ray_cluster, gpus
    ray_cluster.close()


def run_on(executor, repo: Path, lane: int = 0, commit=None, base=None, experiment=7, **limits):
    results, done = [], threading.Event()
    env = child_environment(dict(os.environ), visible_devices="", threads=1, compile_cache=repo / "cache", budget=1)
    spec = RunSpec(experiment, lane, [sys.executable, "train.py"], repo, env, repo.parent / f"run-{repo.name}.log",
                   timeout_s=limits.get("timeout_s", 60), hung_s=limits.get("hung_s", 60), kill_grace_s=2,
                   commit=commit, base=base)
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
    from scheduler.cluster.raycluster import RayCluster

    port = free_port()
    subprocess.run([RAY, "start", "--address", cluster, "--num-cpus", "2", "--num-gpus", "1",
                    "--node-manager-port", str(port)], env=RAY_ENV, check=True, capture_output=True, timeout=120)
    ray_cluster = RayCluster(cluster)
    lost = []
    try:
        gpus = ray_cluster.lanes("3")  # two on the head, one on the new node
        worker_node = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeManagerPort"] == port)
        lane = next(i for i, info in enumerate(ray_cluster.described) if info["node_id"] == worker_node)
        telemetry = ray_cluster.telemetry(gpus, lambda sample: None, lambda gpu, why: lost.append((gpu.lane, why)))
        telemetry.start()
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
        deadline = time.monotonic() + 20
        while not lost and time.monotonic() < deadline:
            time.sleep(0.2)
        telemetry.stop()
        # its telemetry says so too: that node's lane, and only it, is lost (CPU nodes: no NVML, no samples)
        assert [n for n, _ in lost] == [lane] and "Ray node" in lost[0][1] and "is gone" in lost[0][1]
        assert "NVML not available" in telemetry.message
    finally:
        ray_cluster.close()


def test_when_a_node_dies_its_lane_leaves_and_its_run_is_run_again_on_another(cluster, tmp_path):
    port = free_port()
    subprocess.run([RAY, "start", "--address", cluster, "--num-cpus", "2", "--num-gpus", "1",
                    "--node-manager-port", str(port)], env=RAY_ENV, check=True, capture_output=True, timeout=120)
    repo = commit_trainer(tmp_path / "repo", DURATION=4.0)
    argv = [sys.executable, "-m", "autoresearch_tui.cli", "--no-ui", "--executor", "ray", "--ray-address", cluster,
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
    done = subprocess.run([sys.executable, "-m", "autoresearch_tui.cli", "--demo", "--no-ui", "--executor", "ray",
                           "--ray-address", cluster, "--baseline-runs", "2", "--max-experiments", "6"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    con = duckdb.connect(str(tmp_path / ".autoresearch" / "demo" / "results.duckdb"), read_only=True)
    rows = con.execute("SELECT kind, decision, val_bpb, gpu_name FROM experiments WHERE decision IS NOT NULL").fetchall()
    con.close()
    assert {d for kind, d, _, _ in rows if kind != "baseline"} >= {"keep", "discard"}
    assert all(0.2 < v < 4.0 for _, _, v, _ in rows)  # real training, on the nodes
    assert {g for *_, g in rows} == {"Ray GPU"}
    assert "claim: improved val_bpb by " in done.stderr  # the claim's runs ran on the nodes too


def test_kill_9_of_the_supervisor_leaves_no_training_process_on_the_nodes(cluster, tmp_path):
    repo = commit_trainer(tmp_path / "repo", MODE="slow")
    argv = [sys.executable, "-m", "autoresearch_tui.cli", "--no-ui", "--executor", "ray", "--ray-address", cluster,
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


def test_a_frontier_tree_goes_to_a_node_once_and_each_run_carries_only_its_change(lanes, tmp_path):
    ray_cluster, _ = lanes
    repo = make_repo(tmp_path / "r")
    (repo / "weights.bin").write_bytes(os.urandom(200_000))  # a tree worth not sending twice (and unique to this test)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "frontier")
    frontier = git(repo, "rev-parse", "HEAD")
    set_constants(repo / "train.py", VALUE=0.7)
    git(repo, "commit", "-qam", "e1")
    e1 = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", frontier)
    # e2 removes a file: the run must not find it on the node (where the frontier's tree has it)
    text = (repo / "train.py").read_text().replace("VALUE = 1.0", "VALUE = 2.0 if os.path.exists('prepare.py') else 0.5")
    (repo / "train.py").write_text(text)
    git(repo, "rm", "-q", "prepare.py")
    git(repo, "commit", "-qam", "e2")
    e2 = git(repo, "rev-parse", "HEAD")
    executor = ray_cluster.executor("python train.py")
    for number, (lane, commit, value) in enumerate([(0, e1, 0.7), (0, e2, 0.5), (1, e1, 0.7), (1, frontier, 1.0)]):
        git(repo, "checkout", "-q", commit)
        _, results, done = run_on(executor, repo, lane=lane, commit=commit, base=frontier, experiment=number)
        assert done.wait(60)
        assert results[0].status is Status.OK, results[0].error
        assert results[0].summary["val_bpb"] == pytest.approx(value)
    sent = executor.transfers
    assert [t.base for t in sent] == [frontier] * 4
    # both lanes are on the head node: the frontier's tree went there once, with the first run
    assert sent[0].tree_bytes > 200_000 and [t.tree_bytes for t in sent[1:]] == [0, 0, 0]
    assert 0 < sent[0].change_bytes < 20_000 and sent[3].change_bytes == 0  # a run carries only its files


def test_each_node_is_checked_for_its_data_and_prepares_what_it_lacks(lanes, tmp_path):
    ray_cluster, _ = lanes
    repo = make_repo(tmp_path / "r", files={"train.py": "print('unused')\n",
                                            "prepare.py": (ROOT / "prepare.py").read_text()})
    start = git(repo, "rev-parse", "HEAD")
    cache = tmp_path / "node-cache"  # the node's (empty) data cache, as the runs would see it
    env = {"AUTORESEARCH_CACHE": str(cache), "AUTORESEARCH_PROFILE": "tiny", "OPENAI_API_KEY": "sk-hunter2"}
    executor = ray_cluster.executor("python train.py")
    [lacking] = ray_cluster.ready(executor, repo, start, env, prepare=False)
    assert not lacking.ready and lacking.profile == "tiny" and "no prepared data for the tiny profile" in lacking.detail
    assert not (cache / "tiny").exists()  # a check changes nothing
    [prepared] = ray_cluster.ready(executor, repo, start, env)
    assert prepared.ready and prepared.prepared and (cache / "tiny" / "prepared.json").is_file()
    [ready] = ray_cluster.ready(executor, repo, start, env)
    assert ready.ready and not ready.prepared and "tiny profile in" in ready.detail


def test_a_node_without_its_data_stops_the_night_before_it_starts_and_says_which(cluster, tmp_path):
    harness = ("import json, sys\n"
               "if '--check' in sys.argv:\n"
               "    print(json.dumps({'checks': [{'name': 'profile', 'ok': False, 'detail': 'no shards here'}]}))\n"
               "    sys.exit(1)\n"
               "print('cannot download: no route to the data', file=sys.stderr)\n"
               "sys.exit(1)\n")
    repo = make_repo(tmp_path / "repo", files={"train.py": "print('never run')\n", "prepare.py": harness})
    done = subprocess.run([sys.executable, "-m", "autoresearch_tui.cli", "--no-ui", "--executor", "ray", "--ray-address",
                           cluster, "--repo", str(repo), "--tag", "t", "--editable", "train.py", "--command",
                           "python train.py", "--budget", "1"],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 2, done.stderr[-2000:]
    said = done.stderr.strip().splitlines()[-1]
    assert f"node {socket.gethostname()}" in said and "lane(s) 0, 1" in said and "no shards here" in said
    assert "no route to the data" in said and said.endswith("run `prepare.py --tiny` on that node.")
    con = duckdb.connect(str(repo / ".autoresearch" / "results.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM experiments").fetchone()[0] == 0  # not one run started
    con.close()


def test_every_node_samples_its_own_gpus_and_a_lost_card_is_reported(lanes):
    import test_gpus
    from test_gpus import FakeCard, FakeNvml

    ray.cloudpickle.register_pickle_by_value(test_gpus)  # the stand-in driver travels to the node
    ray_cluster, gpus = lanes
    # Ray gave the lanes cards 0 and 1 of the head node; its "driver" loses card 1 after 3 readings
    nvml = FakeNvml(FakeCard(), FakeCard(lose_after=3))
    samples, lost = [], []
    telemetry = ray_cluster.telemetry(gpus, samples.append, lambda gpu, why: lost.append((gpu.lane, why)), nvml=nvml)
    telemetry.start()
    try:
        deadline = time.monotonic() + 30
        while (len([s for s in samples if s.gpu_index == 0]) < 5 or not lost) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        telemetry.stop()
    first = [s for s in samples if s.gpu_index == 0]
    assert len(first) >= 5 and first[0].util_pct == 97.0 and first[0].mem_total_mb == 81_559
    gaps = [(b.t - a.t).total_seconds() for a, b in zip(first, first[1:])]
    assert all(0.5 < gap < 2.0 for gap in gaps), gaps  # about once a second, from the node
    assert len([s for s in samples if s.gpu_index == 1]) == 3
    assert lost == [(1, lost[0][1])] and "is lost" in lost[0][1] and socket.gethostname() in lost[0][1]
    assert telemetry.message is None


def test_doctor_reports_each_node_its_lanes_and_its_data(cluster, tmp_path):
    repo = make_repo(tmp_path / "r", files={"train.py": "print('unused')\n",
                                            "prepare.py": (ROOT / "prepare.py").read_text()})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AUTORESEARCH_CACHE": str(tmp_path / "empty"),
           "AUTORESEARCH_PROFILE": "tiny"}
    done = subprocess.run([sys.executable, "-m", "autoresearch_tui.cli", "doctor", "--executor", "ray", "--ray-address",
                           cluster, "--repo", str(repo), "--editable", "train.py", "--json"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    checks = {(c["area"], c["name"]): c for c in json.loads(done.stdout)["checks"]}
    assert checks[("ray", "cluster")]["verdict"] == "ok" and "2 lane(s) on 1 node(s)" in checks[("ray", "cluster")]["detail"]
    node = checks[("ray", f"node {socket.gethostname()}")]
    assert node["verdict"] == "warning" and "lane(s) 0, 1: Ray GPU" in node["detail"]
    assert "lacks the tiny data" in node["detail"] and "no prepared data" in node["detail"]
    assert not (tmp_path / "empty" / "tiny").exists()  # the doctor looks; it prepares nothing
    assert ("gpu", "lanes") not in checks and ("data", "profile") not in checks  # this machine's are not the lanes


def test_a_cluster_that_stops_answering_ends_the_night_in_order_and_resume_runs_the_rest(tmp_path):
    # A cluster of its own, in a folder of its own, so that its processes (and only they) can be
    # killed: `ray stop` would take the module's cluster too.
    port, home = free_port(), Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths live in it
    head = ["--head", "--port", str(port), "--num-cpus", "2", "--num-gpus", "1", "--include-dashboard=false",
            "--disable-usage-stats", "--temp-dir", str(home)]

    def stop_own_cluster():
        subprocess.run(["pkill", "-9", "-f", str(home)], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)

    subprocess.run([RAY, "start", *head], env=RAY_ENV, check=True, capture_output=True, timeout=120)
    repo = commit_trainer(tmp_path / "repo", DURATION=8.0)
    (tmp_path / "night.toml").write_text("[ray]\nlost_after = 5\n")
    argv = [sys.executable, "-m", "autoresearch_tui.cli", "--no-ui", "--executor", "ray", "--ray-address",
            f"127.0.0.1:{port}", "--config", str(tmp_path / "night.toml"), "--repo", str(repo), "--tag", "t",
            "--editable", "train.py", "--command", "python train.py", "--budget", "8", "--baseline-runs", "2",
            "--max-experiments", "3"]
    proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            event = json.loads(line)
            if event["event"] == "run_started":
                pid = event.get("pid")
                break
        time.sleep(1.0)
        gcs = [int(p) for p in subprocess.run(["pgrep", "-f", f"gcs_server.*--gcs_server_port={port}"],
                                              capture_output=True, text=True).stdout.split()]
        assert gcs
        os.kill(gcs[0], signal.SIGKILL)  # the head's GCS is gone: no node and no actor can be reached through it
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        stop_own_cluster()
    assert proc.returncode == 1, err[-3000:]
    notices = [json.loads(line) for line in out.splitlines()]
    said = [n["message"] for n in notices if n["event"] == "notice"]
    assert any("does not answer" in m and "no new run or proposal" in m for m in said)
    assert any("lost the Ray cluster" in m and "1 run(s) in flight end as interrupted" in m for m in said)
    con = duckdb.connect(str(repo / ".autoresearch" / "results.duckdb"), read_only=True)
    rows = con.execute("SELECT status, count(*) FROM experiments GROUP BY status").fetchall()
    con.close()
    # the run in flight is kept, as interrupted; nothing else began: the next baseline, which
    # waited, says it was never run (and why), rather than "queued" by a supervisor that is gone
    rows = dict(rows)
    assert rows.pop("interrupted") == 1 and set(rows) <= {"not_run"}
    assert pid is None or not alive(pid)
    # the cluster back (a new head on the same port): --resume runs the interrupted baseline again
    subprocess.run([RAY, "start", *head], env=RAY_ENV, check=True, capture_output=True, timeout=120)
    try:
        again = subprocess.run(argv[:-2] + ["--max-experiments", "1", "--resume"], cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=180)
    finally:
        stop_own_cluster()
    assert again.returncode == 0, again.stderr[-3000:]
    con = duckdb.connect(str(repo / ".autoresearch" / "results.duckdb"), read_only=True)
    rerun = con.execute("SELECT status FROM experiments WHERE rerun_of IS NOT NULL").fetchall()
    con.close()
    assert rerun == [("ok",)]


def test_a_cluster_that_is_not_there_is_one_sentence_and_exit_2_at_once(tmp_path):
    repo = make_repo(tmp_path / "repo")
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "autoresearch_tui.cli", "--no-ui", "--executor", "ray", "--ray-address",
                           f"127.0.0.1:{free_port()}", "--repo", str(repo), "--tag", "t", "--editable", "train.py",
                           "--command", "python train.py"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and time.monotonic() - t0 < 30  # not Ray's minutes of retrying
    assert done.stderr.strip().splitlines()[-1].endswith("(Connection refused); start it with `ray start --head` "
                                                          "(and `ray start --address HEAD:PORT` on each node)")

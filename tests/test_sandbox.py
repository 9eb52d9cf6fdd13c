"""The training child's sandbox (scheduler/runs/sandbox.py), tried the way an attacker would: a
planted train.py that goes after the keys, the user's home, the repository, the other lanes,
the experiment log, the supervisor and the network, run by the real command line with real
bubblewrap, real git, a real DuckDB file and a real TCP server on 127.0.0.1. The same script
run with --sandbox none shows each probe can succeed, so a pass under the sandbox means
something.

Without a working bubblewrap these tests skip, unless AUTORESEARCH_REQUIRE_SANDBOX is set (CI
installs bubblewrap and sets it, so there they cannot skip quietly)."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fake_research import FAKE_TRAIN, make_repo
from results.records import Status
from results.store import Store
from scheduler.runs.executor import RunHandle, RunSpec, child_environment
from scheduler.gpus import Gpu
from scheduler.runs.sandbox import Confinement, Sandbox, SandboxMode, SandboxUnavailable, choose
from test_supervisor_cli import ROOT, command

KEY = "sk-openai-sandbox-test-0123456789abcdef"
PLANTED = "sk-planted-in-bashrc-9876543210"


def _working_sandbox() -> Sandbox | None:
    try:
        return choose(SandboxMode.BWRAP, ROOT).sandbox
    except SandboxUnavailable:
        return None


if _working_sandbox() is None and not os.environ.get("AUTORESEARCH_REQUIRE_SANDBOX"):
    pytestmark = pytest.mark.skip(reason="bubblewrap does not work here (apt install bubblewrap)")

# What the planted train.py tries, each reported as a summary line "attempt_NAME: done|blocked".
ATTACKS = '''
import os, socket

RESULTS = []

def attempt(name, action):
    try:
        ok = action()
    except OSError:
        ok = False
    RESULTS.append(f"attempt_{name}: {'done' if ok else 'blocked'}")

def read_keys_from_proc():
    found = False
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                found = found or KEY.encode() in f.read()
        except OSError:
            pass
    return found

def read_rc():
    with open(os.path.join(os.environ["HOME"], ".bashrc")) as f:
        return PLANTED in f.read()

def write(path):
    with open(path, "w") as f:
        f.write("planted by train.py")
    return True

def other_worktrees():
    here = os.path.realpath(os.getcwd())
    folder = os.path.dirname(here)
    others = [os.path.join(folder, d) for d in os.listdir(folder) if os.path.join(folder, d) != here]
    wrote = False
    for other in others:
        try:
            wrote = write(os.path.join(other, "planted.txt")) or wrote
        except OSError:
            pass
    return wrote

def signal_supervisor():
    signalled = False
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"autoresearch_tui.cli import main" not in f.read():
                    continue
            os.kill(int(pid), 0)  # permission to signal it, without doing it
            signalled = True
        except OSError:
            pass
    return signalled

def connect():
    with socket.create_connection(("127.0.0.1", PORT), timeout=3) as s:
        s.sendall(b"hello from train.py")
    return True

attempt("proc_environ", read_keys_from_proc)
attempt("home_rc", read_rc)
attempt("git", lambda: write(os.path.join(GIT_DIR, "hooks", "post-checkout")))
attempt("other_worktree", other_worktrees)
attempt("log_folder", lambda: write(os.path.join(LOG_FOLDER, "planted.txt")))
attempt("signal_supervisor", signal_supervisor)
attempt("network", connect)
'''
ATTEMPTS = ("proc_environ", "home_rc", "git", "other_worktree", "log_folder", "signal_supervisor", "network")


class Listener:
    """A TCP server on 127.0.0.1 that counts the connections it accepts."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self):
        self._stop.set()
        self._thread.join()
        self.sock.close()


def attack(tmp_path, sandbox: str):
    """Runs the planted trainer as the starting point's two baselines; returns what it reported
    per attempt, the finished runs, the process's result and the places it aimed at."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text(f"export OPENAI_API_KEY={PLANTED}\n")
    repo_dir = tmp_path / "repo"
    log_folder = repo_dir / ".autoresearch"
    listener = Listener()
    header = (f"KEY = {KEY!r}\nPLANTED = {PLANTED!r}\nPORT = {listener.port}\n"
              f"GIT_DIR = {str(repo_dir / '.git')!r}\nLOG_FOLDER = {str(log_folder)!r}\n")
    train = FAKE_TRAIN.replace("\nprint(\"---\")\n", "\n" + header + ATTACKS
                               + "\nprint(\"---\")\nprint(\"\\n\".join(RESULTS))\n")
    assert "RESULTS" in train
    repo = make_repo(repo_dir, {"train.py": train, "prepare.py": "# the fixed harness\n"})
    db = log_folder / "results.duckdb"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": KEY, "HOME": str(home)}
    try:
        done = subprocess.run(command(repo, "--max-experiments", "2", "--sandbox", sandbox, db=db), cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=180)
    finally:
        listener.close()
    assert done.returncode == 0, done.stderr[-3000:]
    store = Store(db)
    runs = [e for e in store.experiments() if e.status is Status.OK]
    store.close()
    reports = [{name: e.extra.get(f"attempt_{name}") for name in ATTEMPTS} for e in runs]
    return reports, runs, done, listener, repo, log_folder


def test_a_planted_train_py_gets_nothing_under_the_sandbox(tmp_path):
    reports, runs, done, listener, repo, log_folder = attack(tmp_path, "bwrap")
    # the runs themselves were recorded as any other: both baselines, with their figures
    assert len(runs) == 2 and all(e.val_bpb == pytest.approx(1.0) for e in runs)
    for report in reports:
        assert report == {name: "blocked" for name in ATTEMPTS}
    # and nothing happened outside: no hook in .git, nothing in the other worktrees or the
    # log's folder, no connection reached the server, the supervisor lived to finish
    assert not (repo / ".git" / "hooks" / "post-checkout").exists()
    assert not list((log_folder / "worktrees").rglob("planted.txt"))
    assert not (log_folder / "planted.txt").exists()
    assert listener.accepted == 0
    started = next(json.loads(line) for line in done.stdout.splitlines() if '"notice"' in line
                   and "started" in line)
    assert "sandboxed (bubblewrap" in started["message"]
    assert KEY not in done.stdout + done.stderr


def test_without_the_sandbox_only_the_key_stays_out_of_reach(tmp_path):
    # The same script, unconfined: every probe but the /proc one now works, which shows the
    # probes are real; the key is still not found in any process's environment (scrubbed
    # from the supervisor's, including the block /proc shows, and never given to a child).
    reports, runs, done, listener, repo, log_folder = attack(tmp_path, "none")
    assert len(runs) == 2
    for report in reports:
        assert report["proc_environ"] == "blocked"
        assert {report[name] for name in ATTEMPTS if name != "proc_environ"} == {"done"}
    assert (repo / ".git" / "hooks" / "post-checkout").exists()
    assert listener.accepted == 2
    started = next(json.loads(line) for line in done.stdout.splitlines() if '"notice"' in line
                   and "started" in line)
    assert "not sandboxed (--sandbox none)" in started["message"]
    # asked for no sandbox, so no warning about having none
    assert "LLM-written code" not in done.stdout


def _run(argv, cwd, sandbox, *, env=None, confinement=None, timeout=60):
    """One run through the real executor; returns its result and the log's text."""
    results = []
    done = threading.Event()
    spec = RunSpec(1, 0, argv, cwd, env or child_environment(dict(os.environ), visible_devices="", threads=1,
                                                             compile_cache=cwd / "cache", budget=None),
                   cwd / "run.log", timeout_s=timeout, hung_s=timeout, kill_grace_s=2,
                   confinement=confinement or Confinement(cwd))
    handle = RunHandle(spec, lambda points: None, lambda r: (results.append(r), done.set()), sandbox)
    return handle, results, done


def test_stopping_a_sandboxed_run_stops_everything_it_started(tmp_path):
    sandbox = _working_sandbox()
    marker = "2718.2818"  # a sleep nobody else runs, to find in the machine's process list
    script = f"import subprocess, time\nsubprocess.Popen(['sleep', '{marker}'])\nprint('started', flush=True)\ntime.sleep(600)\n"
    handle, results, done = _run([sys.executable, "-c", script], tmp_path, sandbox)

    def sleepers():
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
            except OSError:
                pass
        return found

    deadline = time.monotonic() + 30
    while not sleepers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sleepers(), "the grandchild never started"
    handle.stop()
    assert done.wait(30)
    assert results[0].status is Status.KILLED
    deadline = time.monotonic() + 10
    while sleepers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sleepers() == []


def test_a_sandboxed_crash_by_signal_is_reported_as_one(tmp_path):
    handle, results, done = _run([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"],
                                 tmp_path, _working_sandbox())
    assert done.wait(30)
    assert results[0].status is Status.CRASH
    assert results[0].error.startswith(f"killed by signal {int(signal.SIGSEGV)}")


def test_the_child_sees_a_bare_dev_a_private_tmp_and_its_own_pid_namespace(tmp_path):
    (Path("/tmp") / "visible-outside.txt").write_text("x")
    script = ("import os, json; print(json.dumps({'dev': sorted(os.listdir('/dev')), 'tmp': os.listdir('/tmp'), "
              "'pid': os.getpid(), 'procs': len([p for p in os.listdir('/proc') if p.isdigit()]), "
              "'tmpdir': os.environ.get('TMPDIR'), 'cwd': os.getcwd()}))")
    handle, results, done = _run([sys.executable, "-c", script], tmp_path, _working_sandbox())
    assert done.wait(30)
    seen = json.loads((tmp_path / "run.log").read_text().splitlines()[0])
    assert "null" in seen["dev"] and "urandom" in seen["dev"]
    assert not [d for d in seen["dev"] if d.startswith(("nvidia", "sd", "nvme", "loop"))]
    assert "visible-outside.txt" not in seen["tmp"]
    assert seen["pid"] <= 3 and seen["procs"] <= 3  # bwrap's init, the run, nothing of the machine
    assert seen["tmpdir"] == "/tmp" and seen["cwd"] == str(tmp_path)


def test_the_child_has_no_capabilities_so_even_root_cannot_remount_the_machine_writable(tmp_path):
    # As root, bwrap would otherwise leave the child every capability: `mount -o remount,rw /`
    # then works, and the real /etc is writable (checked by hand once; this keeps it shut).
    target = ROOT / f".sandbox-probe-{os.getpid()}"  # on the machine's own (read-only) filesystem, not /tmp
    script = ("import subprocess; from pathlib import Path\n"
              "caps = [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')][0]\n"
              "remount = subprocess.run(['mount', '-o', 'remount,bind,rw', '/'], capture_output=True).returncode\n"
              f"try:\n    Path({str(target)!r}).write_text('x'); wrote = True\nexcept OSError:\n    wrote = False\n"
              "print(caps, remount, wrote)\n")
    try:
        handle, results, done = _run([sys.executable, "-c", script], tmp_path / "wt", _working_sandbox())
        assert done.wait(30)
        caps, remount, wrote = (tmp_path / "wt" / "run.log").read_text().split()
        assert int(caps, 16) == 0 and remount != "0" and wrote == "False"
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)


def test_a_gpu_lane_gets_its_own_card_by_uuid_and_the_control_nodes(tmp_path):
    sandbox = _working_sandbox()
    gpu = Gpu(lane=0, index=2, uuid="GPU-8f6c1a3e", name="Fake GPU", minor=5)
    argv = sandbox.wrap(["python", "train.py"], Confinement(tmp_path, (tmp_path / "cache",), gpu))
    binds = [argv[i + 1] for i, a in enumerate(argv) if a == "--dev-bind-try"]
    assert "/dev/nvidia5" in binds and "/dev/nvidiactl" in binds and "/dev/nvidia-uvm" in binds
    assert not [b for b in binds if b[len("/dev/nvidia"):].isdigit() and b != "/dev/nvidia5"]
    # with only its node there, the card would be CUDA's 0: it is named by UUID instead
    at = argv.index("CUDA_VISIBLE_DEVICES")
    assert argv[at - 1] == "--setenv" and argv[at + 1] == "GPU-8f6c1a3e"
    assert argv[argv.index("--") + 1:] == ["python", "train.py"]
    # a CPU lane gets no GPU node at all
    cpu = sandbox.wrap(["true"], Confinement(tmp_path, (), Gpu(0, None, None, "cpu")))
    assert "--dev-bind-try" not in cpu and "CUDA_VISIBLE_DEVICES" not in cpu


def test_the_tiny_trainer_trains_the_same_under_the_sandbox(tmp_path, tiny_cache, monkeypatch):
    # The data cache is read-only in the sandbox (under /tmp here, so hidden but for that).
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tiny_cache))
    sandbox = choose(SandboxMode.BWRAP, ROOT).sandbox
    values = {}
    for name, confine in (("none", None), ("bwrap", sandbox)):
        work = tmp_path / name
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(work), "HEAD"], cwd=ROOT, check=True)
        try:
            env = child_environment({**os.environ, "AUTORESEARCH_PROFILE": "tiny", "AUTORESEARCH_STEP_BUDGET": "12",
                                     "AUTORESEARCH_SEED": "7"}, visible_devices="", threads=2,
                                    compile_cache=work / "cache", budget=None)
            handle, results, done = _run([sys.executable, "-m", "trainer.train"], work, confine, env=env, timeout=240)
            assert done.wait(260)
            assert results[0].status is Status.OK, (work / "run.log").read_text()[-2000:]
            values[name] = results[0].summary["val_bpb"]
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(work)], cwd=ROOT, check=True)
    assert 1.0 < values["bwrap"] < 3.0
    assert values["bwrap"] == pytest.approx(values["none"], abs=1e-4)


def _fake_bwrap(tmp_path, complaint="bwrap: setting up uid map: Permission denied"):
    """A bwrap that answers --version but cannot confine anything, as on a machine whose
    kernel refuses unprivileged user namespaces."""
    fake = tmp_path / "bwrap"
    fake.write_text(f'#!/bin/sh\nif [ "$1" = --version ]; then echo "bubblewrap 0.9.0"; exit 0; fi\n'
                    f'echo "{complaint}" >&2\nexit 1\n')
    fake.chmod(0o755)
    return fake


def test_auto_says_why_there_is_no_sandbox_and_runs_unconfined(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_BWRAP", str(_fake_bwrap(tmp_path)))
    choice = choose(SandboxMode.AUTO, tmp_path)
    assert not choice.active
    assert choice.summary == "bubblewrap cannot confine a process here (bwrap: setting up uid map: Permission denied)"
    with pytest.raises(SandboxUnavailable, match="--sandbox bwrap: bubblewrap cannot confine"):
        choose(SandboxMode.BWRAP, tmp_path)
    monkeypatch.setenv("AUTORESEARCH_BWRAP", str(tmp_path / "no-such-bwrap"))
    assert choose(SandboxMode.AUTO, tmp_path).summary == "bubblewrap is not installed"


def test_the_command_line_says_so_once_and_insisting_on_it_is_bad_input(tmp_path):
    repo = make_repo(tmp_path / "repo")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AUTORESEARCH_BWRAP": str(_fake_bwrap(tmp_path))}
    done = subprocess.run(command(repo, "--max-experiments", "2"), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    notices = [json.loads(line)["message"] for line in done.stdout.splitlines() if '"notice"' in line]
    warnings = [m for m in notices if "not sandboxed" in m and "LLM-written code" in m]
    assert len(warnings) == 1 and "uid map" in warnings[0]
    insist = subprocess.run(command(repo, "--sandbox", "bwrap", tag="u"), cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert insist.returncode == 2
    assert insist.stderr.strip().splitlines() == [
        "autoresearch-tui: --sandbox bwrap: bubblewrap cannot confine a process here (bwrap: setting up uid map: "
        "Permission denied); install bubblewrap (apt install bubblewrap) or use --sandbox auto."]
    assert "autoresearch/u" not in subprocess.run(["git", "branch"], cwd=repo, capture_output=True, text=True).stdout

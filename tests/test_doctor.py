"""`autoresearch-tui doctor`, run as the user runs it: a child process on a real research
repository (autoresearch_tui/demo.py's), the real tiny data, the real trainer in the smoke run, and
loopback fakes of the LLM APIs that the real SDKs talk HTTP to. The GPU paths, which no CLI
flag can fake, go through `diagnose(..., nvml=stand_in)`."""

import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pynvml
import pytest
from fake_research import make_repo
from llm_servers import HttpError, OpenAIServer, Text
from test_gpus import MIB, FakeCard, FakeNvml

from scheduler import config as cfg
from autoresearch_tui.demo import demo_repo
from autoresearch_tui.doctor import Verdict, diagnose

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^([✓!✗]) (\S+) (.+?)  (.*)$")  # mark, area, name, detail
SECRET = "sk-doctor-test-0123456789-never-print-me"


def child_env(cache: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "AUTORESEARCH_PROFILE", "AUTORESEARCH_TIME_BUDGET")
           and "proxy" not in k.lower()}
    env.update({"AUTORESEARCH_CACHE": str(cache), "PYTHONPATH": str(ROOT), "no_proxy": "127.0.0.1,localhost",
                "NO_PROXY": "127.0.0.1,localhost", **extra})
    return env


def doctor(cwd: Path, cache: Path, *args: str, env: dict | None = None, timeout: float = 300):
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "autoresearch_tui.cli", "doctor", *args], cwd=cwd,
                            env=env or child_env(cache), capture_output=True, text=True, timeout=timeout)
    result.wall_s = time.monotonic() - started
    return result


def doctor_json(cwd: Path, cache: Path, *args: str, env: dict | None = None, timeout: float = 300):
    """Runs `doctor --json`; checks that the JSON parses, has its documented shape and agrees
    with the exit code (ok false <=> exit 1). Returns (result, payload)."""
    result = doctor(cwd, cache, *args, "--json", env=env, timeout=timeout)
    assert result.returncode in (0, 1), result.stderr[-3000:]
    payload = json.loads(result.stdout)
    assert set(payload) == {"ok", "seconds", "checks"}
    assert isinstance(payload["seconds"], float) and payload["seconds"] >= 0
    for check in payload["checks"]:
        assert set(check) == {"area", "name", "verdict", "detail", "fix", "figures"}
        assert check["verdict"] in ("ok", "warning", "fail")
    failed = [c for c in payload["checks"] if c["verdict"] == "fail"]
    assert payload["ok"] is (result.returncode == 0) is (not failed), (payload["ok"], result.returncode, failed)
    return result, payload


def find(payload: dict, area: str, name: str | None = None) -> dict:
    hits = [c for c in payload["checks"] if c["area"] == area and (name is None or c["name"] == name)]
    assert len(hits) == 1, (area, name, [(c["area"], c["name"]) for c in payload["checks"]])
    return hits[0]


def failures(payload: dict) -> list[tuple[str, str]]:
    return [(c["area"], c["name"]) for c in payload["checks"] if c["verdict"] == "fail"]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A demo research repository that the tests below leave as they found it."""
    return demo_repo(tmp_path_factory.mktemp("demo"))


@pytest.fixture
def own_repo(tmp_path):
    """A demo repository of this test's own, to break."""
    return demo_repo(tmp_path / "demo")


# ------------------------------------------------------------------------- a machine that can run a night

def test_a_ready_machine_passes_with_a_real_smoke_run_and_leaves_the_repository_as_it_was(
        repo, tiny_cache, tmp_path):
    refs_before = git(repo, "for-each-ref", "--format=%(refname) %(objectname)")
    head_before = git(repo, "symbolic-ref", "HEAD")

    result, payload = doctor_json(tmp_path, tiny_cache, "--repo", str(repo), "--gpus", "cpu:1")
    print(f"doctor --gpus cpu:1 --json (smoke run included): {result.wall_s:.1f} s wall, "
          f"{payload['seconds']:.1f} s by its own clock")
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert payload["ok"] is True and failures(payload) == []

    smoke = find(payload, "smoke", "lane 0 (cpu)")
    assert smoke["verdict"] == "ok" and smoke["fix"] is None
    f = smoke["figures"]
    assert f["attention"] == "sdpa"
    assert isinstance(f["startup_s"], float) and f["startup_s"] > 0
    assert isinstance(f["tok_per_s"], float) and f["tok_per_s"] > 0
    assert isinstance(f["steps"], int) and f["steps"] > 0
    assert 0.5 < f["val_bpb"] < 5
    assert f["training_s"] > 0 and f["wall_s"] > f["training_s"]
    # the real trainer reads the smoke budget, so no warning that it sets its own
    assert not any(c["area"] == "smoke" and c["name"].endswith("budget") for c in payload["checks"])
    for value in ("sdpa", f"startup {f['startup_s']:.1f} s", f"{f['tok_per_s'] / 1e3:,.1f}k tok/s",
                  f"{f['steps']} steps", f"val_bpb {f['val_bpb']}"):
        assert value in smoke["detail"], (value, smoke["detail"])

    # the throwaway worktree is gone, the branches and HEAD are untouched, nothing is left to commit
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert git(repo, "for-each-ref", "--format=%(refname) %(objectname)") == refs_before
    assert git(repo, "symbolic-ref", "HEAD") == head_before
    assert git(repo, "status", "--porcelain") == ""
    assert (repo / ".autoresearch" / "logs" / "doctor" / "smoke-lane0.log").is_file()  # the log a failure points at


def test_quick_skips_the_smoke_run_with_a_warning_in_seconds(repo, tiny_cache, tmp_path):
    result = doctor(tmp_path, tiny_cache, "--repo", str(repo), "--gpus", "cpu:1", "--quick")
    print(f"doctor --gpus cpu:1 --quick: {result.wall_s:.1f} s wall")
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    i = lines.index(next(line for line in lines if line.startswith("! smoke run")))
    assert "skipped (--quick)" in lines[i]
    assert lines[i + 1].strip() == "fix: run doctor without --quick before a night"
    assert lines[-1].startswith("a night can run; 1 warning(s)")
    assert result.wall_s < 15  # the target is 5 s; a loaded 2-core CI machine gets headroom


# ------------------------------------------------------------------------------ what blocks a night

def _empty_cache(tmp_path: Path) -> Path:
    (tmp_path / "empty-cache").mkdir()
    return tmp_path / "empty-cache"


def _corrupt_cache(tmp_path: Path, tiny_cache: Path) -> Path:
    copy = tmp_path / "corrupt-cache"
    shutil.copytree(tiny_cache, copy)
    shard = sorted((copy / "tiny" / "data").glob("shard_*.parquet"))[0]
    shard.write_bytes(b"this is not parquet" * 100)
    return copy


@pytest.mark.parametrize("case", ["data missing", "corrupt shard", "no editable file", "dirty prepare.py",
                                  "anthropic key unset"])
def test_what_blocks_a_night_is_a_failure_with_its_fix(case, own_repo, tiny_cache, tmp_path):
    cache, args = tiny_cache, ["--repo", str(own_repo), "--gpus", "cpu:1", "--quick"]
    if case == "data missing":
        cache, expected, fix = _empty_cache(tmp_path), ("data", "profile"), "prepare.py --tiny"
    elif case == "corrupt shard":
        cache, expected, fix = _corrupt_cache(tmp_path, tiny_cache), ("data", "shards"), "prepare.py --tiny"
    elif case == "no editable file":
        args += ["--editable", "nope.py"]
        expected, fix = ("target", "editable"), "--editable PATH"
    elif case == "dirty prepare.py":
        (own_repo / "prepare.py").write_text((own_repo / "prepare.py").read_text() + "\nMAX_SEQ_LEN = 4096\n")
        expected, fix = ("target", "prepare.py"), "checkout -- prepare.py"
    else:
        args += ["--agent", "anthropic:claude-haiku-4-5"]
        expected, fix = ("agent", "key"), "export ANTHROPIC_API_KEY="

    result, payload = doctor_json(tmp_path, cache, *args)
    assert result.returncode == 1
    assert failures(payload) == [expected]
    failed = find(payload, *expected)
    assert failed["fix"] and fix in failed["fix"], failed
    if case == "corrupt shard":
        assert "shard_00000.parquet" in failed["detail"]

    # the same failure in the table: its ✗ line, then its fix
    table = doctor(tmp_path, cache, *args)
    assert table.returncode == 1
    lines = table.stdout.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith(f"✗ {expected[0]} {expected[1]} "))
    assert lines[i + 1].strip() == f"fix: {failed['fix']}"
    assert lines[-1].startswith("1 problem(s) block a night")


def test_a_missing_shard_is_a_failed_data_check(repo, tiny_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    sorted((cache / "tiny" / "data").glob("shard_*.parquet"))[0].unlink()
    result, payload = doctor_json(tmp_path, cache, "--repo", str(repo), "--gpus", "cpu:1", "--quick")
    assert result.returncode == 1 and failures(payload) == [("data", "shards")]


def test_a_refused_key_names_the_key_and_never_prints_it(repo, tiny_cache, tmp_path):
    with OpenAIServer(lambda body: HttpError(401, message="Incorrect API key provided")) as server:
        env = child_env(tiny_cache, OPENAI_API_KEY=SECRET)
        result, payload = doctor_json(tmp_path, tiny_cache, "--repo", str(repo), "--gpus", "cpu:1", "--quick",
                                      "--agent", "openai:gpt-4.1-mini", "--base-url", server.base_url, env=env)
        table = doctor(tmp_path, tiny_cache, "--repo", str(repo), "--gpus", "cpu:1", "--quick",
                       "--agent", "openai:gpt-4.1-mini", "--base-url", server.base_url, env=env)
        sent = [r.api_key for r in server.requests]
    assert sent == [SECRET, SECRET]  # the key did reach the server, once per run (a 401 is not retried)
    assert result.returncode == table.returncode == 1
    assert failures(payload) == [("agent", "call")]
    assert find(payload, "agent", "key")["verdict"] == "ok"
    # where the key came from, never its value, and the truth about the launcher's copy
    assert find(payload, "agent", "key")["detail"].startswith("OPENAI_API_KEY from the environment (OPENAI_API_KEY): "
                                                             "the shell (and uv) that start a night keep it")
    call = find(payload, "agent", "call")
    assert "401" in call["detail"] and "OPENAI_API_KEY" in call["fix"]
    for out in (result.stdout, result.stderr, table.stdout, table.stderr):
        assert SECRET not in out and SECRET[:12] not in out
    assert "✗ agent call" in table.stdout and "fix: the key was refused: check OPENAI_API_KEY" in table.stdout


def test_a_base_url_where_nothing_listens_says_to_start_the_server(repo, tiny_cache, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    result, payload = doctor_json(tmp_path, tiny_cache, "--repo", str(repo), "--gpus", "cpu:1", "--quick",
                                  "--agent", "openai:gpt-4.1-mini", "--base-url", url)
    print(f"doctor --quick with nothing at --base-url: {result.wall_s:.1f} s wall (the call's 10 s retry budget)")
    assert result.returncode == 1
    assert failures(payload) == [("agent", "call")]
    call = find(payload, "agent", "call")
    assert url in call["detail"]
    assert call["fix"] == f"nothing answers at {url}: start the server, or fix --base-url"
    assert find(payload, "agent", "key")["detail"] == "no OPENAI_API_KEY: a local server needs none"


# ------------------------------------------------------------------------------- a working agent

def test_a_working_local_agent_answers_and_gets_the_cautious_default_window(repo, tiny_cache, tmp_path):
    with OpenAIServer([Text("OK")]) as server:
        result, payload = doctor_json(tmp_path, tiny_cache, "--repo", str(repo), "--gpus", "cpu:1", "--quick",
                                      "--agent", "openai:gpt-4.1-mini", "--base-url", server.base_url)
        asked = [r.body["model"] for r in server.requests]
    assert result.returncode == 0, result.stdout
    assert asked == ["gpt-4.1-mini"]
    assert failures(payload) == []
    assert find(payload, "agent", "call")["verdict"] == "ok"
    assert find(payload, "agent", "call")["figures"]["input_tokens"] > 0
    window = find(payload, "agent", "window")
    assert window["verdict"] == "ok" and window["figures"] == {"tokens": 8192}
    assert window["detail"].startswith("8,192 tokens (a cautious default")


# ------------------------------------------------------------------------------------- bad usage

def test_a_malformed_gpus_value_is_a_failed_gpu_check_not_a_usage_error(repo, tiny_cache, tmp_path):
    # config.build does not look at --gpus; discovery does, inside the report (unlike the main
    # command, where a GpuSpecError is exit 2)
    result, payload = doctor_json(tmp_path, tiny_cache, "--repo", str(repo), "--gpus", "banana")
    assert result.returncode == 1
    lanes = find(payload, "gpu", "lanes")
    assert lanes["verdict"] == "fail" and "'banana'" in lanes["detail"] and "cpu:N" in lanes["fix"]
    # with no lanes the smoke run cannot run: a failure too (not a run on zero lanes)
    assert find(payload, "smoke", "run")["verdict"] == "fail"
    # (and machine torch on a CPU-only torch: a value that is not cpu:N asks for GPUs)
    assert set(failures(payload)) - {("machine", "torch")} == {("gpu", "lanes"), ("smoke", "run")}


@pytest.mark.parametrize("args,says", [
    (["--context-tokens", "5"], "context_tokens must be a whole number of at least 1024"),
    (["--context-tokens", "many"], "invalid int value"),
    (["--agent", "gpt-4"], "--agent must be offline"),
    (["--tag", "no spaces"], "--tag"),
    (["--config", "missing.toml"], "does not exist"),
    (["--frobnicate"], "unrecognized arguments"),
])
def test_bad_flags_are_exit_2_with_one_line(args, says, tmp_path):
    result = doctor(tmp_path, tmp_path, *args, timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and says in result.stderr, result.stderr
    assert result.stderr.startswith("autoresearch-tui doctor: ")


# --------------------------------------------------------------------- a target with its own budget

def test_a_target_that_ignores_the_budget_passes_the_smoke_run_with_a_warning(tiny_cache, tmp_path):
    target = make_repo(tmp_path / "upstream")  # its train.py reports training_seconds: 0.3, whatever the budget
    result, payload = doctor_json(tmp_path, tiny_cache, "--repo", str(target), "--gpus", "cpu:1",
                                  "--command", "python train.py", "--editable", "train.py")
    print(f"doctor on a fake target (smoke run of a 0.3 s train.py): {result.wall_s:.1f} s wall")
    assert result.returncode == 0, result.stdout
    assert find(payload, "target", "prepare.py")["verdict"] == "ok"
    smoke = find(payload, "smoke", "lane 0 (cpu)")
    assert smoke["verdict"] == "ok"
    assert smoke["figures"]["steps"] == 4 and smoke["figures"]["val_bpb"] == 1.0
    budget = find(payload, "smoke", "lane 0 (cpu) budget")
    assert budget["verdict"] == "warning"
    assert budget["figures"]["training_s"] == 0.3
    assert "0.3 s for a budget of 10 s" in budget["detail"] and "AUTORESEARCH_TIME_BUDGET" in budget["detail"]
    assert "AUTORESEARCH_TIME_BUDGET" in budget["fix"] and "--budget" in budget["fix"]
    assert git(target, "worktree", "list", "--porcelain").count("worktree ") == 1

    # the table: every line a check (or its fix), the smoke line with its figures, the budget
    # warning under it with its fix, and the summary (the real trainer's smoke run is checked
    # through --json above: one minute of a 2-core machine is enough)
    table = doctor(tmp_path, tiny_cache, "--repo", str(target), "--gpus", "cpu:1", "--command", "python train.py",
                   "--editable", "train.py")
    assert table.returncode == 0, table.stdout
    lines = table.stdout.splitlines()
    assert all(LINE.match(line) or line.lstrip().startswith("fix: ") for line in lines[:-1]), lines
    i = next(i for i, line in enumerate(lines) if line.startswith("✓ smoke lane 0 (cpu) "))
    assert re.search(r"  attention \?, startup \?, 1\.0k tok/s, MFU 1\.0%, 4 steps, peak 1\.0 GiB, val_bpb 1\.0$",
                     lines[i]), lines[i]
    assert lines[i + 1].startswith("! smoke lane 0 (cpu) budget ") and "trained 0.3 s" in lines[i + 1]
    assert lines[i + 2].strip().startswith("fix: make the target read AUTORESEARCH_TIME_BUDGET")
    assert re.fullmatch(r"a night can run; \d+ warning\(s\); checked in \d+\.\d s", lines[-1]), lines[-1]


# -------------------------------------------------------------------- the GPUs, through a stand-in NVML

class Nvml(FakeNvml):
    """test_gpus' stand-in, plus what doctor reads beyond discovery, and handles that can be lost."""

    def __init__(self, *cards, init_error=None, lost_handles=()):
        super().__init__(*cards, init_error=init_error)
        self.lost_handles = set(lost_handles)

    def nvmlSystemGetDriverVersion(self):
        return "570.86.15"

    def nvmlDeviceGetHandleByIndex(self, index):
        if index in self.lost_handles:
            raise pynvml.NVMLError_GpuIsLost()
        return super().nvmlDeviceGetHandleByIndex(index)

    def nvmlDeviceGetCudaComputeCapability(self, h):
        return self.cards[h].answer("capability", (9, 0))


@pytest.fixture(scope="module")
def gpu_config(tmp_path_factory, tiny_cache):
    target = make_repo(tmp_path_factory.mktemp("gpu-target"))
    config = cfg.build({}, {"gpus": "auto", "target": {"editable": ["train.py"], "command": "python train.py"}})
    return dataclasses.replace(config, repo=target)


def gpu_checks(report):
    return [(c.name, c.verdict) for c in report.checks if c.area == "gpu"]


def test_no_driver_fails_the_gpu_check_with_its_fix(gpu_config):
    report = diagnose(gpu_config, quick=True, nvml=Nvml(init_error=pynvml.NVMLError_DriverNotLoaded))
    assert gpu_checks(report) == [("lanes", Verdict.FAIL)]
    lanes = next(c for c in report.checks if c.area == "gpu")
    assert "No NVIDIA GPU was found" in lanes.detail and "--gpus cpu:N" in lanes.fix
    assert not report.ok  # so the CLI exits 1


def test_a_busy_gpu_is_a_warning_naming_the_pid(gpu_config):
    nvml = Nvml(FakeCard(), FakeCard(uuid="GPU-1", processes=[(4242, 2048 * MIB)]))
    report = diagnose(gpu_config, quick=True, nvml=nvml)
    assert gpu_checks(report) == [("driver", Verdict.OK), ("0", Verdict.OK), ("1", Verdict.WARNING)]
    driver, idle, busy = (c for c in report.checks if c.area == "gpu")
    assert driver.detail == "NVIDIA driver 570.86.15"
    assert idle.detail.endswith("compute capability 9.0; idle")
    assert "in use by pid 4242 (2048 MiB)" in busy.detail
    assert busy.fix == "stop those processes or leave GPU 1 out of --gpus"
    assert busy.figures["capability"] == "9.0" and busy.figures["memory_mb"] == 81_559
    assert nvml.inits == nvml.shutdowns  # every nvmlInit doctor made, it undid


def test_a_lost_gpu_named_in_gpus_fails_the_gpu_check(gpu_config):
    nvml = Nvml(FakeCard(), FakeCard(), lost_handles={0})
    report = diagnose(dataclasses.replace(gpu_config, gpus="0,1"), quick=True, nvml=nvml)
    assert gpu_checks(report) == [("lanes", Verdict.FAIL)]
    lanes = next(c for c in report.checks if c.area == "gpu")
    assert "GPU 0 cannot be used" in lanes.detail


def test_a_lost_gpu_under_auto_is_left_out_and_the_report_says_so(gpu_config, caplog):
    # Discovery skips it (a night runs on the others); doctor names it as a warning with a fix.
    nvml = Nvml(FakeCard(), FakeCard(uuid="GPU-1"), lost_handles={0})
    with caplog.at_level("WARNING", logger="autoresearch.gpus"):
        report = diagnose(gpu_config, quick=True, nvml=nvml)
    assert gpu_checks(report) == [("driver", Verdict.OK), ("0", Verdict.WARNING), ("1", Verdict.OK)]
    lost = next(c for c in report.checks if c.area == "gpu" and c.name == "0")
    assert "left out" in lost.detail and "lost" in lost.detail.lower() and "nvidia-smi" in lost.fix
    assert not any(c.verdict is Verdict.FAIL for c in report.checks if c.area == "gpu")  # GPU 1 can run


def test_a_gpu_whose_processes_cannot_be_read_is_not_called_idle(gpu_config):
    # It answered discovery, then its process list fails: the report says it could not tell.
    card = FakeCard(uuid="GPU-0")
    nvml = Nvml(card)
    original = nvml.nvmlDeviceGetComputeRunningProcesses

    def lost(h):
        card.lost_error = pynvml.NVMLError_GpuIsLost
        return original(h)

    nvml.nvmlDeviceGetComputeRunningProcesses = lost
    report = diagnose(gpu_config, quick=True, nvml=nvml)
    assert gpu_checks(report) == [("driver", Verdict.OK), ("0", Verdict.OK)]
    assert next(c for c in report.checks if c.area == "gpu" and c.name == "0").detail.endswith(
        "; its processes are not reported")


# ------------------------------------------------------------------------- the sandbox

def _fake_bwrap(tmp_path: Path) -> Path:
    """A bwrap that answers --version but cannot confine anything (no user namespaces)."""
    fake = tmp_path / "bwrap"
    fake.write_text('#!/bin/sh\nif [ "$1" = --version ]; then echo "bubblewrap 0.9.0"; exit 0; fi\n'
                    'echo "bwrap: No permissions to create new namespace" >&2\nexit 1\n')
    fake.chmod(0o755)
    return fake


def test_a_sandbox_that_cannot_work_is_a_warning_under_auto_and_a_failure_when_insisted_on(repo, tiny_cache, tmp_path):
    env = child_env(tiny_cache, AUTORESEARCH_BWRAP=str(_fake_bwrap(tmp_path)))
    result, payload = doctor_json(tmp_path, tiny_cache, "--repo", str(repo), "--gpus", "cpu:1", "--quick", env=env)
    check = find(payload, "machine", "sandbox")
    assert check["verdict"] == "warning"
    assert "No permissions to create new namespace" in check["detail"] and "your rights" in check["detail"]
    assert "namespaces" in check["fix"]
    result, payload = doctor_json(tmp_path, tiny_cache, "--repo", str(repo), "--gpus", "cpu:1", "--quick",
                                  "--sandbox", "bwrap", env=env)
    assert result.returncode == 1 and ("machine", "sandbox") in failures(payload)


def test_a_working_sandbox_is_checked_and_the_smoke_run_goes_through_it(repo, tiny_cache, tmp_path):
    from scheduler.runs.sandbox import SandboxMode, SandboxUnavailable, choose
    try:
        choose(SandboxMode.BWRAP, repo)
    except SandboxUnavailable:
        if not os.environ.get("AUTORESEARCH_REQUIRE_SANDBOX"):
            pytest.skip("bubblewrap does not work here")
        raise
    # A target that reports whether it can reach the network: only a sandboxed run cannot.
    probe = ("import socket, subprocess, sys\n"
             "try:\n    socket.create_connection(('127.0.0.1', %d), timeout=2).close(); net = 'yes'\n"
             "except OSError:\n    net = 'no'\n"
             "subprocess.run([sys.executable, '-m', 'trainer.train'], check=True)\nprint('network:', net)\n")
    with socket.create_server(("127.0.0.1", 0)) as server:
        (tmp_path / "probe.py").write_text(probe % server.getsockname()[1])
        command = f"python {tmp_path / 'probe.py'}"
        result, payload = doctor_json(tmp_path, tiny_cache, "--repo", str(repo), "--gpus", "cpu:1",
                                      "--command", command, "--sandbox-read", str(tmp_path))
    assert find(payload, "machine", "sandbox")["verdict"] == "ok"
    assert find(payload, "smoke", "lane 0 (cpu)")["verdict"] == "ok", payload
    log = (repo / ".autoresearch" / "logs" / "doctor" / "smoke-lane0.log").read_text()
    assert "network: no" in log

"""Running one experiment as a supervised child process.

The child is the target's training command, run with the supervisor's interpreter in the
lane's worktree, in its own process group (so stopping it stops whatever it started), with an
environment that pins it to its GPU and carries no secrets: the code it runs was written by an
LLM. One thread per run reads its output, writes the log, parses it, and watches the clock."""

from __future__ import annotations

import codecs
import enum
import functools
import logging
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from results.records import Status

from .runparse import Progress, RunParser, typed_summary
from .sandbox import Confinement, Sandbox

log = logging.getLogger("autoresearch.executor")

# Only these variables reach a child (then anything secret-looking is dropped even from them).
_PASS_NAMES = {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "TERM", "TZ", "TMPDIR", "TEMP", "TMP",
               "LD_LIBRARY_PATH", "LIBRARY_PATH", "VIRTUAL_ENV", "CONDA_PREFIX", "XDG_CACHE_HOME",
               "HF_HOME", "HF_DATASETS_CACHE", "TORCH_HOME", "CC", "CXX", "PYTHONDONTWRITEBYTECODE",
               "PYTHONHASHSEED", "SSL_CERT_FILE", "CUDA_HOME", "CUDA_PATH"}
_PASS_PREFIXES = ("LC_", "AUTORESEARCH_", "CUDA_", "NCCL_", "TORCH_", "TORCHINDUCTOR_", "TRITON_",
                  "PYTORCH_", "NVIDIA_", "OMP_", "MKL_", "KMP_")
READ_INTERVAL_S = 0.5  # progress reaches the UI at most this late; a run's end is seen at once
_BUSY_CHUNK = 16384  # a chunk this big means a chatty child: read again at once, never block it
_SECRET = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH|COOKIE|SESSION|PRIVATE", re.I)


def child_environment(base: dict[str, str], *, visible_devices: str, threads: int, compile_cache: Path,
                      budget: float | None) -> dict[str, str]:
    """The environment of a training child: an allow-list of the parent's, minus anything that
    looks like a secret, plus the lane's pinning."""
    env = {k: v for k, v in base.items()
           if (k in _PASS_NAMES or k.startswith(_PASS_PREFIXES)) and not _SECRET.search(k)}
    env.update({
        "CUDA_VISIBLE_DEVICES": visible_devices,
        # NVML numbers cards by PCI bus; without this CUDA may number them differently and a
        # lane's telemetry would describe another lane's card.
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        # Shared by lanes on the same GPU model: the second lane to compile a graph reuses it.
        "TORCHINDUCTOR_CACHE_DIR": str(compile_cache / "inductor"),
        "TRITON_CACHE_DIR": str(compile_cache / "triton"),
    })
    if budget is not None:
        env["AUTORESEARCH_TIME_BUDGET"] = f"{budget:g}"
    return env


# What a child's environment says about the run itself rather than the machine it is on: this
# much goes with a run to a Ray node, which supplies its own PATH, HOME, virtualenv and CUDA paths.
_RUN_NAMES = {"CUDA_DEVICE_ORDER", "HF_HUB_OFFLINE", "PYTHONUNBUFFERED", "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE"}


def run_settings(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items()
            if (k.startswith("AUTORESEARCH_") or k in _RUN_NAMES) and not _SECRET.search(k)}


def slug(text: str) -> str:
    """A GPU model's name as a folder name: its compile cache is shared by the lanes of that model."""
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").lower() or "device"


def target_command(command: str) -> list[str]:
    """The target's command with `python` meaning the supervisor's own interpreter."""
    argv = shlex.split(command)
    if argv and argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return argv


class Reach(enum.StrEnum):
    """Whether the place runs happen (a Ray cluster's head) answers the supervisor."""

    UNREACHABLE = "unreachable"  # no answer now: no new run or proposal until it answers
    BACK = "back"  # it answers again
    LOST = "lost"  # no answer for too long: the night ends


@dataclass(frozen=True)
class RunSpec:
    experiment_id: int
    lane: int
    argv: list[str]
    cwd: Path
    env: dict[str, str]
    log_path: Path
    timeout_s: float  # wall time from start; past it the run is stopped as a timeout
    hung_s: float  # silence after which the run is stopped as hung
    kill_grace_s: float = 10.0  # between SIGTERM and SIGKILL
    metric: str = "val_bpb"
    confinement: Confinement | None = None  # what a sandbox gives the run; None: run it unconfined
    commit: str | None = None  # the commit checked out in cwd (None: whatever is there)
    base: str | None = None  # the frontier it was made on, whose tree a remote node may hold already


@dataclass(frozen=True)
class RunResult:
    experiment_id: int
    lane: int
    status: Status
    exit_code: int | None
    summary: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    seconds: float = 0.0


def _die_with_parent() -> None:
    """In the child, before exec: Linux sends it SIGKILL when the supervisor dies, even by
    kill -9, so no training run is left holding a GPU with nobody to read its output."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: --resume still finds the run interrupted


@functools.cache
def _pdeathsig_prefix() -> tuple[str, ...] | None:
    """util-linux's `setpriv --pdeathsig KILL -- cmd` sets the same death signal, then execs.
    It lets Popen use vfork instead of a full fork for a Python preexec function: 0.4 ms
    instead of 5 ms or more per start with a big supervisor (bench/bench_engine.py), time a
    lane's GPU would otherwise sit idle. Checked once; None means fall back to preexec."""
    path = shutil.which("setpriv") if sys.platform == "linux" else None
    if path is None:
        return None
    try:
        ok = subprocess.run([path, "--pdeathsig", "KILL", "--", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return (path, "--pdeathsig", "KILL", "--") if ok else None


def _check_executable(argv: list[str], cwd: Path, path: str | None) -> None:
    """Say "cannot start" ourselves: behind setpriv, a missing program would only show up as
    the launcher's exit code."""
    program = argv[0] if argv else ""
    found = (cwd / program if "/" in program else None) if program else None
    if found is not None:
        ok = os.access(found, os.X_OK) and found.is_file()
    else:
        ok = bool(program) and shutil.which(program, path=path) is not None
    if not ok:
        raise RuntimeError(f"cannot start {program or 'an empty command'}: no such executable")


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class RunHandle:
    """A live child. `stop()` may be called from any thread, any number of times."""

    def __init__(self, spec: RunSpec, on_progress: Callable[[list[Progress]], None], on_done: Callable[[RunResult], None],
                 sandbox: Sandbox | None = None):
        self.spec = spec
        self._on_progress, self._on_done = on_progress, on_done
        self._stop_status: Status | None = None
        self._stop_lock = threading.Lock()
        self.started_at = utcnow()
        self._t0 = time.monotonic()
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        _check_executable(spec.argv, spec.cwd, spec.env.get("PATH"))
        argv = spec.argv
        self.sandboxed = sandbox is not None and spec.confinement is not None
        if self.sandboxed:
            argv = sandbox.wrap(argv, spec.confinement)
        self._log = spec.log_path.open("ab", buffering=0)
        prefix = _pdeathsig_prefix()
        preexec = None if prefix is not None or sys.platform != "linux" else _die_with_parent
        try:
            self.proc = subprocess.Popen([*(prefix or ()), *argv], cwd=spec.cwd, env=spec.env,
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=preexec)
        except OSError as e:
            self._log.close()
            raise RuntimeError(f"cannot start {spec.argv[0]}: {e.strerror}") from None
        self.pid = self.proc.pid
        self._thread = threading.Thread(target=self._watch, name=f"run-{spec.experiment_id}", daemon=True)
        self._thread.start()

    def stop(self, status: Status = Status.KILLED) -> None:
        """Stop the run, recording why (killed, timeout, hung). SIGTERM to the whole group, then
        SIGKILL after the grace period; the watcher thread does the waiting."""
        with self._stop_lock:
            if self._stop_status is not None or self.proc.poll() is not None:
                return
            self._stop_status = status
            self._stop_deadline = time.monotonic() + self.spec.kill_grace_s
        self._signal(signal.SIGTERM)

    def _signal(self, sig) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _watch(self) -> None:
        parser = RunParser()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        fd = self.proc.stdout.fileno()
        last_output = time.monotonic()
        killed_hard = False
        try:
            exit_fd = os.pidfd_open(self.pid)  # Linux 5.3+: readable once the child has exited
        except (AttributeError, OSError):
            exit_fd = None
        try:
            while True:
                ready, _, _ = select.select([fd], [], [], 0.5)
                now = time.monotonic()
                if ready:
                    chunk = os.read(fd, 1 << 20)
                    if not chunk:
                        break  # every process of the group has closed its output
                    last_output = now
                    self._log.write(chunk)
                    points = parser.feed(decoder.decode(chunk))
                    if points:
                        self._on_progress(points)
                    if len(chunk) < _BUSY_CHUNK:
                        # Let a few lines gather in the pipe: one wake-up per line would cost
                        # the supervisor more CPU than the parsing itself (bench/bench_engine.py).
                        # The process's own descriptor wakes us at once when it exits, so the
                        # end of a run is never noticed late.
                        if exit_fd is not None:
                            select.select([exit_fd], [], [], READ_INTERVAL_S)
                        else:
                            time.sleep(READ_INTERVAL_S)
                if self._stop_status is None:
                    if now - self._t0 > self.spec.timeout_s:
                        self.stop(Status.TIMEOUT)
                    elif now - last_output > self.spec.hung_s:
                        self.stop(Status.HUNG)
                elif not killed_hard and now >= self._stop_deadline:
                    self._signal(signal.SIGKILL)  # it ignored SIGTERM
                    killed_hard = True
            points = parser.feed(decoder.decode(b"", final=True)) + parser.close()
            if points:
                self._on_progress(points)
            # The output closed: the child is ending. A grandchild that closed its output but
            # lives on is still in the group; make sure nothing of the run outlives it.
            try:
                exit_code = self.proc.wait(timeout=self.spec.kill_grace_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                exit_code = self.proc.wait()
            self._signal(signal.SIGKILL)
            result = self._result(parser, exit_code)
        except BaseException as e:  # noqa: BLE001 - a bug of ours must still release the lane
            log.exception("watching run %s failed", self.spec.experiment_id)
            self._signal(signal.SIGKILL)
            result = RunResult(self.spec.experiment_id, self.spec.lane, Status.CRASH, self.proc.poll(),
                               error=f"supervisor error while watching the run: {e!r}",
                               started_at=self.started_at, finished_at=utcnow(), seconds=time.monotonic() - self._t0)
        finally:
            if exit_fd is not None:
                os.close(exit_fd)
            self.proc.stdout.close()
            self._log.close()
        self._on_done(result)

    def _result(self, parser: RunParser, exit_code: int) -> RunResult:
        return classify(self.spec, parser, exit_code, self._stop_status, self.started_at, time.monotonic() - self._t0,
                        shell_signals=self.sandboxed)


def classify(spec: RunSpec, parser: RunParser, exit_code: int | None, stopped: Status | None, started_at: datetime,
             seconds: float, *, shell_signals: bool = False) -> RunResult:
    """What a finished run was, from its output and exit, however it ran (here or on a Ray
    node). `stopped`: why the supervisor stopped it, if it did. `shell_signals`: the exit code
    came through a launcher (bwrap) that reports a child killed by signal N as 128 + N."""
    summary, extra = typed_summary(parser.summary)
    error = None
    if stopped is not None:
        status = stopped
        error = {Status.TIMEOUT: f"ran past {spec.timeout_s:.0f} s",
                 Status.HUNG: f"no output for {spec.hung_s:.0f} s",
                 Status.KILLED: "stopped by the user"}.get(status, status.value)
    elif parser.failed:
        status, error = Status.NAN, "the loss diverged (the trainer printed FAIL)"
    elif parser.oom:
        status, error = Status.OOM, parser.error_excerpt(1)
    elif exit_code != 0:
        status = Status.CRASH
        code = exit_code if exit_code is not None else 0
        signal_number = -code if code < 0 else code - 128 if shell_signals and code > 128 else 0
        error = (f"killed by signal {signal_number}" if signal_number else f"exit code {exit_code}") + \
            (f": {parser.error_excerpt(1)}" if parser.tail else "")
    elif summary.get(spec.metric) is None and spec.metric not in extra:
        status, error = Status.CRASH, f"exited 0 without a {spec.metric} in its summary"
    else:
        status = Status.OK
    return RunResult(spec.experiment_id, spec.lane, status, exit_code, summary, extra, error, started_at, utcnow(),
                     seconds)


class LocalExecutor:
    """Runs experiments as child processes on this machine, confined by `sandbox` when there is
    one (scheduler/runs/sandbox.py). The engine sees only start(): another executor (a Ray cluster,
    say) would return a handle with the same methods."""

    def __init__(self, sandbox: Sandbox | None = None):
        self.sandbox = sandbox

    def start(self, spec: RunSpec, on_progress: Callable[[list[Progress]], None],
              on_done: Callable[[RunResult], None]) -> RunHandle:
        return RunHandle(spec, on_progress, on_done, self.sandbox)

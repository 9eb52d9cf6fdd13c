"""The sandbox a training child runs in: what LLM-written code may touch, all in one place.

Every experiment runs a `train.py` an LLM wrote, unattended, for hours. With bubblewrap (`bwrap`,
Debian's `bubblewrap` package; it works as root and, elsewhere, through unprivileged user
namespaces) the child gets:

- the filesystem read-only, except its own worktree, the compile cache of its GPU model and a
  private, empty `/tmp`; the repository (its `.git`, the experiment log, the other lanes'
  worktrees) is readable but nothing of it is writable;
- an empty home (a private tmpfs): rc files, `~/.netrc`, cloud credentials and other
  repositories are gone; only what a run needs is put back, read-only: the data cache
  (`$AUTORESEARCH_CACHE`, default `~/.cache/autoresearch`), the Python it runs with, the
  repository, and any `--sandbox-read` paths;
- its own PID namespace (it sees neither the supervisor nor the other lanes, and cannot signal
  them), its own IPC namespace, and a network namespace with nothing in it but loopback;
- of the GPU device nodes, its lane's card and the driver's control nodes only, where NVML
  told us the card's minor number; the card is then named by UUID in CUDA_VISIBLE_DEVICES,
  since the driver numbers only the cards a process can open;
- as root, no capabilities (root without them cannot remount anything writable).

The child stays in the supervisor's process group for it, so stopping a run still signals
everything the run started; bwrap's `--die-with-parent` and the PID namespace (its init's end
ends every process in it) make sure nothing outlives it either way.

`--sandbox auto` (the default) uses bubblewrap where it works and says once, at start, why
it does not where it does not; `--sandbox bwrap` insists (exit 2 if it cannot); `--sandbox
none` runs children unconfined, with the provider keys still out of their reach
(scheduler/runs/keys.py)."""

from __future__ import annotations

import enum
import glob
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from scheduler.gpus import Gpu

# The driver's nodes every CUDA process opens, whichever card it uses; nvidia-caps holds MIG's.
_CONTROL_NODES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset",
                  "/dev/nvidia-caps")
_PROBE_TIMEOUT_S = 20.0


class SandboxMode(enum.Enum):
    AUTO = "auto"
    BWRAP = "bwrap"
    NONE = "none"


class SandboxUnavailable(Exception):
    """--sandbox bwrap where bubblewrap cannot run; one sentence for the user (exit 2)."""


@dataclass(frozen=True)
class Confinement:
    """What one run is given beyond the read-only machine: the worktree it runs in, the caches
    it may write (shared by the lanes of one GPU model), and its lane's card (None on CPU)."""

    worktree: Path
    writable: tuple[Path, ...] = ()
    gpu: Gpu | None = None


@dataclass(frozen=True)
class SandboxChoice:
    """What --sandbox resolved to on this machine, and the line that says so."""

    sandbox: "Sandbox | None"
    summary: str  # "bubblewrap 0.8.0", or why children run unconfined ("bubblewrap is not installed")
    mode: SandboxMode = SandboxMode.AUTO  # what was asked for

    @property
    def fell_back(self) -> bool:
        """Asked for where it works, and it does not work here: worth a warning."""
        return self.mode is SandboxMode.AUTO and self.sandbox is None

    @property
    def active(self) -> bool:
        return self.sandbox is not None


@dataclass(frozen=True)
class Sandbox:
    """bubblewrap with this machine's allowances; `wrap` confines one run's command."""

    bwrap: str
    version: str
    home: Path
    readable: tuple[Path, ...]  # put back read-only over the empty home and /tmp
    root: bool  # running as root: drop every capability

    def wrap(self, argv: list[str], confinement: Confinement) -> list[str]:
        out = [self.bwrap, "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-net",
               "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
        if self.home != Path("/"):
            out += ["--tmpfs", str(self.home)]
        for path in self.readable:
            out += ["--ro-bind-try", str(path), str(path)]
        for path in (confinement.worktree, *confinement.writable):
            path.mkdir(parents=True, exist_ok=True)  # a bind needs its source to exist
            out += ["--bind", str(path), str(path)]
        out += self._devices(confinement.gpu)
        if self.root:
            out += ["--cap-drop", "ALL"]
        # tempfile and torch's scratch files go to the private /tmp, wherever TMPDIR pointed.
        out += ["--setenv", "TMPDIR", "/tmp", "--chdir", str(confinement.worktree)]
        return [*out, "--", *argv]

    @staticmethod
    def _devices(gpu: Gpu | None) -> list[str]:
        if gpu is None or gpu.index is None:
            return []  # a CPU lane gets no GPU node at all
        if gpu.minor is not None:
            nodes = [f"/dev/nvidia{gpu.minor}"]
        else:  # NVML did not say which node is this card's: every card, as without a sandbox
            nodes = sorted(p for p in glob.glob("/dev/nvidia[0-9]*") if p[len("/dev/nvidia"):].isdigit())
        out = []
        for node in (*nodes, *_CONTROL_NODES):
            out += ["--dev-bind-try", node, node]
        if gpu.minor is not None and gpu.uuid:
            # Only this card's node is there, so CUDA numbers it 0: its index would name nothing.
            out += ["--setenv", "CUDA_VISIBLE_DEVICES", gpu.uuid]
        return out


def readable_paths(repo: Path, extra: tuple[Path, ...] = ()) -> tuple[Path, ...]:
    """What a run needs to read that may lie under the hidden home or /tmp: the data cache, the
    Python the supervisor runs (a uv-managed one lives in ~/.local/share/uv), its import path
    (editable installs), the programs on PATH, the repository, and the user's additions."""
    cache = Path(os.environ.get("AUTORESEARCH_CACHE") or "~/.cache/autoresearch").expanduser()
    candidates = [cache, Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix),
                  Path(sys.executable).resolve().parent.parent, repo, *extra]
    candidates += [Path(p) for p in sys.path if p]
    candidates += [Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    hidden = [Path.home(), Path("/tmp")]
    out: list[Path] = []
    for path in candidates:
        path = path.absolute()
        for variant in dict.fromkeys((path, path.resolve())):
            if any(variant.is_relative_to(h) for h in hidden) and variant.exists() and variant not in out:
                out.append(variant)
    # A parent before its children, and no child of one already there: fewer mounts per start.
    out.sort(key=lambda p: len(p.parts))
    return tuple(p for i, p in enumerate(out) if not any(p.is_relative_to(q) for q in out[:i]))


def choose(mode: SandboxMode, repo: Path, extra: tuple[Path, ...] = ()) -> SandboxChoice:
    """The sandbox --sandbox asks for, checked to work here by confining `true` once."""
    if mode is SandboxMode.NONE:
        return SandboxChoice(None, "--sandbox none", mode)
    problem, bwrap, version = _bwrap_problem()
    if problem is None:
        sandbox = Sandbox(bwrap, version, Path.home(), readable_paths(repo, extra), os.geteuid() == 0)
        problem = _try(sandbox)
        if problem is None:
            return SandboxChoice(sandbox, f"bubblewrap {version}", mode)
    if mode is SandboxMode.BWRAP:
        raise SandboxUnavailable(f"--sandbox bwrap: {problem}; install bubblewrap (apt install bubblewrap) "
                                 f"or use --sandbox auto.")
    return SandboxChoice(None, problem, mode)


def _bwrap_problem() -> tuple[str | None, str, str]:
    if sys.platform != "linux":
        return "bubblewrap is Linux's", "", ""
    # AUTORESEARCH_BWRAP: a bwrap that is not on PATH (or, in the tests, one that cannot work).
    path = os.environ.get("AUTORESEARCH_BWRAP") or shutil.which("bwrap")
    if not path or not os.access(path, os.X_OK):
        return "bubblewrap is not installed", "", ""
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as e:
        return f"{path} does not run ({e})", path, ""
    words = done.stdout.split()
    return None, path, words[-1] if words else "?"


def _try(sandbox: Sandbox) -> str | None:
    """Why a confined `true` fails here (no user namespaces, an AppArmor rule), or None."""
    import tempfile

    true = shutil.which("true") or "/bin/true"
    with tempfile.TemporaryDirectory(prefix="sandbox-probe-") as scratch:
        argv = sandbox.wrap([true], Confinement(Path(scratch)))
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as e:
            return f"bubblewrap cannot start ({e})"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return f"bubblewrap cannot confine a process here ({last})"
    return None

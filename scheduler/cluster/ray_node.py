"""What runs on a Ray node: for each lane, an actor that holds the lane's GPU (its placement group
bundle) for the whole session and runs each experiment there as a child process in its own
process group, streaming the output back as it comes; and for each node, a telemetry actor.

What a run needs travels as a `Shipment`: the frontier's tree as a Ray object, fetched by a node
the first time one of its runs needs it and then kept on the node's disk, and per run only the
files the experiment's commit changes. Imports only the standard library and Ray at the top
(every node imports this module to unpickle its actors); the package's own modules it needs
are imported where they are used."""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import ray

_SMALL_CHUNK = 16384  # a short read: let lines gather, as the local executor does, before the next
_GATHER_S = 0.25
ROOT = Path(tempfile.gettempdir()) / "autoresearch-ray"  # runs' folders and the node's kept trees
_KEEP_TREES = 4  # frontier trees kept per node; older ones go once they are this many
_PREPARE_TIMEOUT_S = 3 * 3600.0  # a full profile's download on a slow link


@dataclass(frozen=True)
class Shipment:
    """What a node needs to run one commit: `base`'s tree (kept by the node once fetched) with the
    run's changes on top."""

    base: str  # the commit whose tree the node keeps: the frontier the experiment was made on
    tree: tuple  # (ObjectRef,) of base's tree as a .tar.gz; boxed, so that Ray fetches it only for a node without it
    changes: bytes  # a .tar.gz of the files the run's commit adds or changes against base (b"" if none)
    deleted: tuple[str, ...] = ()  # the files it removes


@dataclass(frozen=True)
class NodeData:
    """Whether a node has the data profile its lanes' runs will read."""

    node_id: str
    host: str
    profile: str
    ready: bool
    detail: str  # the harness's own words (prepare.py --check), or why it could not be asked
    prepared: bool = False  # it lacked the data and prepare.py made it there
    output: str = ""  # the end of prepare.py's output, when it ran

    @property
    def prepare_command(self) -> list[str]:
        return _prepare_command(self.profile)


def _prepare_command(profile: str) -> list[str]:
    """What makes a profile's data (prepare.py's own flags)."""
    return ["prepare.py", "--tiny"] if profile == "tiny" else ["prepare.py", "--profile", profile]


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the actor's death ends it
    except (OSError, AttributeError):
        pass


def _interpreter(argv: list[str]) -> list[str]:
    if argv and argv[0] in ("python", "python3"):
        return [sys.executable, *argv[1:]]  # the node's own interpreter
    return argv


def _prune(trees: Path, keep: Path) -> None:
    """The least recently used trees beyond _KEEP_TREES go (never the one in use)."""
    try:
        kept = sorted((p for p in trees.iterdir() if p.is_dir() and not p.name.startswith(".")),
                      key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return
    for old in kept[_KEEP_TREES:]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


@ray.remote(max_concurrency=4)  # a run streams while stop and describe answer
class LaneWorker:
    def __init__(self):
        self._proc: subprocess.Popen | None = None
        self._node = ray.get_runtime_context().get_node_id()
        self._name: str | None = None
        self._gpu = False

    def describe(self) -> dict:
        """Where this lane landed: the node, the card Ray gave it, and the card's name."""
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        name, uuid = None, None
        try:
            import pynvml

            pynvml.nvmlInit()
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(int(visible.split(",")[0]))
                name, uuid = pynvml.nvmlDeviceGetName(handle), pynvml.nvmlDeviceGetUUID(handle)
            finally:
                pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - no NVML (a CPU node with logical GPUs): Ray's word for it
            accelerators = [k for k in ray.get_runtime_context().get_assigned_resources()
                            if k.startswith("accelerator_type:")]
            name = accelerators[0].split(":", 1)[1] if accelerators else "Ray GPU"
        self._name = name if isinstance(name, str) else name.decode()
        self._gpu = uuid is not None
        return {"node_id": self._node, "host": socket.gethostname(), "cuda_visible_devices": visible,
                "name": self._name, "uuid": uuid if uuid is None or isinstance(uuid, str) else uuid.decode(),
                "pid": os.getpid(), "cpus": os.cpu_count() or 1}

    # -- the tree a run needs ------------------------------------------------------------------

    def _tree(self, shipment: Shipment) -> tuple[Path, int]:
        """The base tree on this node's disk, fetched from the object store only if the node does
        not have it yet; also how many bytes that took (0 when it was here)."""
        trees = ROOT / "trees" / self._node[:16]  # per node: nodes may share a /tmp (one host, or tests)
        path = trees / shipment.base
        if path.is_dir():
            os.utime(path)  # recently used: kept longest
            return path, 0
        archive = ray.get(shipment.tree[0])
        trees.mkdir(parents=True, exist_ok=True)
        incoming = Path(tempfile.mkdtemp(prefix=".incoming-", dir=trees))
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(incoming, filter="data")
        try:
            incoming.rename(path)  # whole or not at all: another lane of this node may be doing the same
        except OSError:
            shutil.rmtree(incoming, ignore_errors=True)
        _prune(trees, path)
        return path, len(archive)

    def _checkout(self, shipment: Shipment, work: Path) -> int:
        tree, fetched = self._tree(shipment)
        shutil.rmtree(work, ignore_errors=True)
        work.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(tree, work, symlinks=True)  # a copy: the run may write into its folder
        for name in shipment.deleted:
            target = work / name
            if target.is_file() or target.is_symlink():
                target.unlink()
        if shipment.changes:
            with tarfile.open(fileobj=io.BytesIO(shipment.changes)) as tar:
                tar.extractall(work, filter="data")
        return fetched

    def _environment(self, sent: dict) -> dict:
        """The node's own machine variables (PATH, HOME, the virtualenv, CUDA's), filtered as for
        a local child, then the run's settings from the supervisor, then Ray's card."""
        from scheduler.runs.executor import child_environment, slug

        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "autoresearch-tui" / "compile"
        env = child_environment(dict(os.environ), visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES", ""),
                                threads=1, compile_cache=cache / slug(self._name or "device"), budget=None)
        env.update(sent)
        env["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES", "")  # Ray chose this lane's card
        return env

    # -- a run ----------------------------------------------------------------------------------------

    def run(self, shipment: Shipment, command: str, env: dict, name: str):
        """A generator: ("tree", bytes fetched), ("started", pid), then output chunks (bytes), then
        ("exit", code). A failure to set the run up ends it as ("exit", None, why)."""
        work = ROOT / name
        try:
            fetched = self._checkout(shipment, work)
        except (OSError, tarfile.TarError, ray.exceptions.RayError) as e:
            yield ("exit", None, f"cannot set up the run's folder on {socket.gethostname()}: {e}")
            return
        yield ("tree", fetched, "")
        argv = _interpreter(shlex.split(command))
        try:
            self._proc = subprocess.Popen(argv, cwd=work, env=self._environment(env), stdin=subprocess.DEVNULL,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                          preexec_fn=_die_with_parent)
        except OSError as e:
            shutil.rmtree(work, ignore_errors=True)
            yield ("exit", None, f"cannot start {argv[0] if argv else command}: {e.strerror}")
            return
        yield ("started", self._proc.pid, "")
        fd = self._proc.stdout.fileno()
        try:
            while chunk := os.read(fd, 1 << 20):
                yield chunk
                if len(chunk) < _SMALL_CHUNK:
                    time.sleep(_GATHER_S)
            code = self._proc.wait()
        finally:
            self._signal(signal.SIGKILL)  # nothing the run started outlives it
            self._proc.stdout.close()
            shutil.rmtree(work, ignore_errors=True)
        yield ("exit", code, "")

    def stop(self, sig: int) -> None:
        self._signal(sig)

    def _signal(self, sig: int) -> None:
        if self._proc is not None:
            try:
                os.killpg(self._proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    # -- the node's data ---------------------------------------------------------------------------------

    def data(self, shipment: Shipment, env: dict, prepare: bool) -> NodeData:
        """Whether this node has the data profile its runs will read, asked of the harness there
        (prepare.py --check in the target's own tree); with `prepare`, made there when it lacks it."""
        host = socket.gethostname()
        run_env = self._environment(env)
        # The profile the trainer picks on this node: the one named, else full on a CUDA card.
        profile = run_env.get("AUTORESEARCH_PROFILE") or ("full" if self._gpu else "tiny")
        work = ROOT / f"data-{self._node[:16]}-{os.getpid()}"
        try:
            self._checkout(shipment, work)
            if not (work / "prepare.py").is_file():
                return NodeData(self._node, host, profile, True, "the target has no prepare.py: its runs read "
                                                                 "whatever data they find")
            ready, detail = self._check(work, run_env, profile)
            if ready or not prepare:
                return NodeData(self._node, host, profile, ready, detail)
            argv = [sys.executable, *_prepare_command(profile)]
            done = subprocess.run(argv, cwd=work, env=run_env, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=_PREPARE_TIMEOUT_S)
            output = "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])
            ready, after = self._check(work, run_env, profile)
            return NodeData(self._node, host, profile, ready, after if ready else detail, prepared=ready,
                            output=output)
        except (OSError, subprocess.SubprocessError, tarfile.TarError, ray.exceptions.RayError) as e:
            return NodeData(self._node, host, profile, False, f"the check could not run there: {e}")
        finally:
            shutil.rmtree(work, ignore_errors=True)

    @staticmethod
    def _check(work: Path, env: dict, profile: str) -> tuple[bool, str]:
        done = subprocess.run([sys.executable, "prepare.py", "--check", "--profile", profile], cwd=work, env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
        try:
            found = json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return True, "its prepare.py has no --check: the data is read by the first run"
        failed = [c["detail"] for c in found.get("checks", []) if not c["ok"]]
        if failed:
            return False, "; ".join(failed)
        return True, f"{profile} profile in {found.get('dir')}"


@ray.remote(num_cpus=0, max_concurrency=2)
class NodeSampler:
    """A node's GPU telemetry: the same sampler as on one machine (scheduler/gpus.py, NVML on
    this node) over the node's lanes; the supervisor collects what it read about once a second."""

    def __init__(self, gpus: list, nvml=None):
        from scheduler.gpus import TelemetrySampler

        self._lock = threading.Lock()
        self._samples: list = []
        self._lost: list[tuple[int, str]] = []
        self._sampler = TelemetrySampler(gpus, self._took, lambda gpu, why: self._lose(gpu.lane, why), nvml=nvml)
        self._sampler.start()

    def _took(self, sample) -> None:
        with self._lock:
            self._samples.append(sample)
            del self._samples[:-600]  # ten minutes of one card, should nobody collect for that long

    def _lose(self, lane: int, why: str) -> None:
        with self._lock:
            self._lost.append((lane, why))

    def collect(self) -> tuple[list, list[tuple[int, str]], str | None]:
        """What was read since the last call: samples, lost lanes (lane, why), and why telemetry
        is off on this node, if it is."""
        with self._lock:
            samples, lost, self._samples, self._lost = self._samples, self._lost, [], []
        return samples, lost, self._sampler.message

    def stop(self) -> None:
        self._sampler.stop()

"""`--executor ray`: the lanes on a Ray cluster's GPUs, one supervisor for all of them.

Each lane holds one GPU of one node for the whole session: a placement group bundle
({"GPU": 1, "CPU": 1}) and an actor in it (ray_node.LaneWorker), so the lane's runs always land
on the same card and comparisons stay within one GPU model. A run is made here as for a local
one (the commit, the secret-free settings); the frontier's tree goes to each node once (a Ray
object the node keeps on disk) and each run sends only the files its commit changes; the node
runs the target command in a node-local folder in its own process group, and the output streams
back into the same parser, log file and events. Before the lanes start, every node is checked
for the data its runs read (and prepares it); each node samples its own GPUs; and the head's
GCS is watched, so that a cluster that stops answering stops the proposing and, if it does not
come back, ends the night with every result kept. The engine sees only the executor interface of
scheduler/runs/executor.py, the sampler's, and inbox messages.

Imported only for --executor ray (ray is an optional extra: autoresearch-tui[ray])."""

from __future__ import annotations

import codecs
import logging
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# Ray ends a driver that has not reached the cluster's GCS for 60 s, from inside its C++ core,
# with no chance to save anything (measured: exit 1 a minute after the head's GCS was killed).
# The supervisor watches the head itself (ClusterWatch) and ends the night in order; Ray must
# not do it first. Read when ray.init starts the driver's core worker.
os.environ.setdefault("RAY_gcs_rpc_server_reconnect_timeout_s", str(10 * 365 * 24 * 3600))

import ray  # noqa: E402
from ray.util.placement_group import placement_group, remove_placement_group  # noqa: E402
from ray.util.scheduling_strategies import (NodeAffinitySchedulingStrategy,  # noqa: E402
                                            PlacementGroupSchedulingStrategy)

from results.records import Status  # noqa: E402
from scheduler.gpus import Gpu  # noqa: E402
from scheduler.runs.executor import Reach, RunResult, RunSpec, classify, run_settings, utcnow  # noqa: E402
from scheduler.runs.runparse import Progress, RunParser  # noqa: E402

from .ray_node import LaneWorker, NodeData, NodeSampler, Shipment  # noqa: E402

log = logging.getLogger("autoresearch.ray")

PLACEMENT_TIMEOUT_S = 60.0
LOST_AFTER_S = 60.0  # a head silent this long is gone: the night ends (Ray's own raylets give up at 60 s)
_WATCH_INTERVAL_S = 0.5
_ABANDON_S = 15.0  # a stopped run whose node says nothing this long after SIGKILL is ended here
_TREES_KEPT = 4  # frontier trees kept in the object store (the current one and a few before)


class ClusterError(Exception):
    """The cluster cannot give what was asked; one sentence for the user (exit 2)."""


@dataclass(frozen=True)
class Transfer:
    """What one run sent to its node (bench/bench_engine.py reports these)."""

    lane: int
    base: str
    tree_bytes: int  # the base tree, when the node did not have it yet (0 when it had)
    change_bytes: int  # the run's own files


def _head(address: str) -> str | None:
    """HOST:PORT of the head `address` names: itself, or for auto what Ray would pick (RAY_ADDRESS,
    else the cluster last started on this machine); None when there is none to name."""
    if address != "auto":
        return address
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    try:
        return (Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster").read_text().strip() or None
    except OSError:
        return None


def _answers(where: tuple[str, int], timeout: float) -> str | None:
    """None when the head's GCS accepts a TCP connection; why not, otherwise."""
    try:
        socket.create_connection(where, timeout=timeout).close()
        return None
    except OSError as e:
        return e.strerror or type(e).__name__


class RayCluster:
    def __init__(self, address: str):
        head = _head(address)
        host, _, port = (head or "").removeprefix("ray://").rpartition(":")
        # A head that is not there: ray.init would wait for it for minutes (measured: over 100 s).
        if host and port.isdigit() and (why := _answers((host, int(port)), 5.0)) is not None:
            raise ClusterError(f"cannot reach the Ray cluster at {head} ({why}); start it with `ray start --head` "
                               f"(and `ray start --address HEAD:PORT` on each node)")
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING,
                     configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ClusterError(f"cannot reach the Ray cluster at {address}: {e}; start it with `ray start --head` "
                               f"(and `ray start --address HEAD:PORT` on each node)") from None
        self.address = ray.get_runtime_context().gcs_address
        self._group = None
        self.workers: list = []
        self.described: list[dict] = []  # per lane: node_id, host, cuda_visible_devices, name, uuid, pid, cpus
        self._closing: list[Callable[[], None]] = []
        self._watches: list[ClusterWatch] = []

    def lanes(self, spec: str) -> list[Gpu]:
        """--gpus on Ray: auto (every GPU the cluster offers) or a count."""
        total = int(ray.cluster_resources().get("GPU", 0))
        text = spec.strip().lower()
        if text == "auto":
            count = total
        elif text.isascii() and text.isdigit() and int(text) > 0:
            count = int(text)
        else:
            raise ClusterError(f"--gpus on a Ray cluster must be auto or a number of GPUs, not {spec!r}.")
        if count == 0 or count > total:
            raise ClusterError(f"--gpus {spec}: the Ray cluster offers {total} GPU(s).")
        self._group = placement_group([{"GPU": 1, "CPU": 1}] * count, strategy="PACK", name="autoresearch-lanes")
        try:
            ray.get(self._group.ready(), timeout=PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise ClusterError(f"the Ray cluster did not give {count} GPU(s) with a CPU each within "
                               f"{PLACEMENT_TIMEOUT_S:.0f} s (another job holds them?).") from None
        self.workers = [LaneWorker.options(num_gpus=1, num_cpus=1, scheduling_strategy=PlacementGroupSchedulingStrategy(
            self._group, placement_group_bundle_index=i)).remote() for i in range(count)]
        described = self.described = ray.get([w.describe.remote() for w in self.workers])
        lanes = []
        for lane, info in enumerate(described):
            first = (info["cuda_visible_devices"] or "").split(",")[0]
            index = int(first) if first.isdigit() else lane
            lanes.append(Gpu(lane=lane, index=index, uuid=info["uuid"], name=info["name"], node=info["host"]))
            log.info("lane %d: GPU %s (%s) on %s (node %s)", lane, index, info["name"], info["host"],
                     info["node_id"][:12])
        return lanes

    def nodes(self) -> dict[str, list[int]]:
        """Each node's lanes, by node id."""
        found: dict[str, list[int]] = defaultdict(list)
        for lane, info in enumerate(self.described):
            found[info["node_id"]].append(lane)
        return dict(found)

    def executor(self, command: str) -> "RayExecutor":
        return RayExecutor(self.workers, command, self.described)

    def ready(self, executor: "RayExecutor", repo: Path, commit: str, env: dict[str, str],
              prepare: bool = True) -> list[NodeData]:
        """Every node's data, checked by the harness there (one lane's actor per node, all nodes
        at once); a node that lacks it prepares it when `prepare`. Runs before any lane starts."""
        shipment = executor.shelf.shipment(repo, commit, commit)
        asks = [self.workers[lanes[0]].data.remote(shipment, executor.settings(env, lanes[0]), prepare)
                for lanes in self.nodes().values()]
        try:
            return ray.get(asks)
        except ray.exceptions.RayError as e:
            raise ClusterError(f"a Ray node failed while its data was checked ({type(e).__name__}); "
                               f"see `ray status`") from None

    def telemetry(self, gpus: list[Gpu], on_sample, on_lost, nvml=None) -> "ClusterTelemetry":
        return ClusterTelemetry(self, gpus, on_sample, on_lost, nvml=nvml)

    def watch(self, on_change: Callable[[Reach, str], None], lost_after: float = LOST_AFTER_S) -> "ClusterWatch":
        watch = ClusterWatch(self.address, on_change, lost_after)
        watch.start()
        self._watches.append(watch)
        self._closing.append(watch.stop)
        return watch

    def close(self) -> None:
        """Everything of this session goes from the cluster. Bounded: a cluster that no longer
        answers must not keep the supervisor from ending."""
        for stop in self._closing:
            stop()
        gone = any(watch.lost for watch in self._watches)
        done = threading.Thread(target=self._release, args=(gone,), name="ray-close", daemon=True)
        done.start()
        done.join(5.0 if gone else 20.0)
        if done.is_alive():
            log.warning("the Ray cluster did not answer while this session left it; its actors end with this process")

    def _release(self, gone: bool) -> None:
        for worker in self.workers:
            ray.kill(worker)
        if self._group is not None and not gone:  # (with the head gone, this would wait for it)
            remove_placement_group(self._group)
        ray.shutdown()


class TreeShelf:
    """The frontier trees, put in Ray's object store: a node fetches one the first time a run of
    its needs it and keeps it on disk (ray_node.LaneWorker._tree), so a frontier's tree crosses
    the network once per node, and each run carries only its commit's changed files."""

    def __init__(self, keep: int = _TREES_KEPT):
        self._keep = keep
        self._refs: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()

    def shipment(self, cwd: Path, base: str, commit: str) -> Shipment:
        with self._lock:
            ref = self._refs.get(base)
            if ref is None:
                ref = self._refs[base] = ray.put(_git(cwd, "archive", "--format=tar.gz", base))
                while len(self._refs) > self._keep:
                    self._refs.popitem(last=False)
            self._refs.move_to_end(base)
        changed, deleted = [], []
        if commit != base:
            listing = _git(cwd, "diff", "--no-renames", "--name-status", "-z", base, commit).decode().split("\0")
            for status, name in zip(listing[0::2], listing[1::2]):
                (deleted if status == "D" else changed).append(name)
        changes = _git(cwd, "archive", "--format=tar.gz", commit, "--", *changed) if changed else b""
        return Shipment(base, (ref,), changes, tuple(deleted))


def _git(cwd: Path, *args: str) -> bytes:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, env={**os.environ, "GIT_LITERAL_PATHSPECS": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"git {args[0]} for the node failed: {done.stderr.decode(errors='replace').strip()[:200]}")
    return done.stdout


class RayExecutor:
    """The executor interface (scheduler/runs/executor.py) on the lanes' actors."""

    def __init__(self, workers: list, command: str, described: list[dict]):
        self.workers, self.command = workers, command
        self.sandbox = None  # the nodes run the command as the Ray worker's user; no bubblewrap there
        self.shelf = TreeShelf()
        self.transfers: list[Transfer] = []
        on_node = defaultdict(int)
        for info in described:
            on_node[info["node_id"]] += 1
        # The node's CPU threads divided among its lanes, as on one machine.
        self._threads = [max(1, info.get("cpus", 1) // on_node[info["node_id"]]) for info in described]

    def settings(self, env: dict[str, str], lane: int) -> dict[str, str]:
        """The run's own settings for the node (never the supervisor's machine's paths)."""
        threads = str(self._threads[lane]) if lane < len(self._threads) else "1"
        return {**run_settings(env), "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}

    def start(self, spec: RunSpec, on_progress: Callable[[list[Progress]], None],
              on_done: Callable[[RunResult], None]) -> "RayRun":
        commit = spec.commit or _git(spec.cwd, "rev-parse", "HEAD").decode().strip()
        shipment = self.shelf.shipment(spec.cwd, spec.base or commit, commit)
        return RayRun(spec, self.workers[spec.lane], self.command, shipment, self.settings(spec.env, spec.lane),
                      on_progress, on_done, self.transfers.append)


class RayRun:
    """A run on a lane's actor. `stop()` from any thread, any number of times."""

    def __init__(self, spec: RunSpec, worker, command: str, shipment: Shipment, env: dict[str, str],
                 on_progress, on_done, on_transfer: Callable[[Transfer], None]):
        self.spec, self.worker = spec, worker
        self._on_progress, self._on_done, self._on_transfer = on_progress, on_done, on_transfer
        self._shipment = shipment
        self._stop_status: Status | None = None
        self._stop_deadline = 0.0
        self._lock = threading.Lock()
        self._ended = False
        self.started_at = utcnow()
        self._t0 = self._last_output = time.monotonic()
        self.pid: int | None = None  # the process on the node
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._stream = worker.run.remote(shipment, command, env, f"lane-{spec.lane}-{spec.experiment_id}")
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._follow, name=f"ray-run-{spec.experiment_id}", daemon=True)
        self._thread.start()
        threading.Thread(target=self._watch, name=f"ray-watch-{spec.experiment_id}", daemon=True).start()

    def stop(self, status: Status = Status.KILLED) -> None:
        with self._lock:
            if self._stop_status is not None or self._done.is_set():
                return
            self._stop_status = status
            self._stop_deadline = time.monotonic() + self.spec.kill_grace_s
        self.worker.stop.remote(signal.SIGTERM)

    def join(self, timeout: float | None = None) -> None:
        self._done.wait(timeout)

    def _watch(self) -> None:
        """The clock: timeouts, silence, SIGKILL for a run that ignores SIGTERM, and the end of a
        stopped run whose node no longer answers (its cluster gone), so that no lane waits forever."""
        killed_hard = False
        while not self._done.wait(_WATCH_INTERVAL_S):
            now = time.monotonic()
            if self._stop_status is None:
                if now - self._t0 > self.spec.timeout_s:
                    self.stop(Status.TIMEOUT)
                elif now - self._last_output > self.spec.hung_s:
                    self.stop(Status.HUNG)
            elif not killed_hard and now >= self._stop_deadline:
                self.worker.stop.remote(signal.SIGKILL)
                killed_hard = True
            elif killed_hard and now >= self._stop_deadline + _ABANDON_S:
                log.warning("run %s: its node did not answer after it was stopped; ended here", self.spec.experiment_id)
                self._end(self._result(Status.INTERRUPTED, "its Ray node did not answer after the run was stopped"))

    def _result(self, status: Status, error: str) -> RunResult:
        return RunResult(self.spec.experiment_id, self.spec.lane, status, None, error=error,
                         started_at=self.started_at, finished_at=utcnow(), seconds=time.monotonic() - self._t0)

    def _end(self, result: RunResult) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
        self._done.set()
        self._on_done(result)

    def _follow(self) -> None:
        parser = RunParser()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        exit_code, error = None, None
        try:
            with self.spec.log_path.open("ab", buffering=0) as out:
                for ref in self._stream:
                    item = ray.get(ref)
                    if isinstance(item, tuple):
                        kind, value, why = item
                        if kind == "tree":
                            self._on_transfer(Transfer(self.spec.lane, self._shipment.base, value,
                                                       len(self._shipment.changes)))
                            if value:
                                log.info("lane %d: the tree of %s went to its node (%.1f MB)", self.spec.lane,
                                         self._shipment.base[:8], value / 1e6)
                        elif kind == "started":
                            self.pid = value
                            if self._stop_status is not None:  # stopped before it began: end it now
                                self.worker.stop.remote(signal.SIGKILL)
                        else:
                            exit_code, error = value, why or None
                        continue
                    self._last_output = time.monotonic()
                    out.write(item)
                    points = parser.feed(decoder.decode(item))
                    if points:
                        self._on_progress(points)
            points = parser.feed(decoder.decode(b"", final=True)) + parser.close()
            if points:
                self._on_progress(points)
            if error is not None:
                result = self._result(Status.CRASH, error)
            else:
                result = classify(self.spec, parser, exit_code, self._stop_status, self.started_at,
                                  time.monotonic() - self._t0)
        except ray.exceptions.RayError as e:  # the node or its actor died: a fault of the system, not the run
            log.warning("run %s: its Ray node failed: %s", self.spec.experiment_id, type(e).__name__)
            result = self._result(Status.INTERRUPTED, f"the lane's Ray node failed ({type(e).__name__})")
        except BaseException as e:  # noqa: BLE001 - a bug of ours must still release the lane
            log.exception("following run %s failed", self.spec.experiment_id)
            result = self._result(Status.CRASH, f"supervisor error while following the run: {e!r}")
        self._end(result)


class ClusterTelemetry:
    """GPU telemetry from every node: one ray_node.NodeSampler per node (NVML there, about 1 Hz),
    collected here once a second. A node whose sampler is gone has lost its GPUs: each of its lanes
    is reported lost, as a card that fell off the bus is on one machine."""

    def __init__(self, cluster: RayCluster, gpus: list[Gpu], on_sample, on_lost, nvml=None,
                 interval: float = 1.0):
        self._on_sample, self._on_lost, self._interval = on_sample, on_lost, interval
        self._gpus = {gpu.lane: gpu for gpu in gpus}
        self._nodes = []  # (actor, lanes, host)
        for node_id, lanes in cluster.nodes().items():
            actor = NodeSampler.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote(
                [self._gpus[lane] for lane in lanes], nvml)
            self._nodes.append((actor, lanes, cluster.described[lanes[0]]["host"]))
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._messages: dict[str, str] = {}

    @property
    def message(self) -> str | None:
        """Why telemetry is off, on the nodes where it is; None while every node samples."""
        return "; ".join(f"{host}: {why}" for host, why in self._messages.items()) or None

    def processes(self, lane: int) -> tuple:
        return ()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ray-telemetry", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for actor, _, _ in self._nodes:
            ray.kill(actor)

    def _run(self) -> None:
        next_tick = time.monotonic()
        while self._nodes and not self._stopping.is_set():
            asks = {actor.collect.remote(): (actor, lanes, host) for actor, lanes, host in self._nodes}
            ready, slow = ray.wait(list(asks), num_returns=len(asks), timeout=max(5.0, 3 * self._interval))
            for ref in ready:
                actor, lanes, host = asks[ref]
                try:
                    samples, lost, off = ray.get(ref)
                except ray.exceptions.RayError as e:
                    self._nodes.remove((actor, lanes, host))
                    for lane in lanes:
                        self._on_lost(self._gpus[lane], f"its Ray node {host} is gone ({type(e).__name__})")
                    continue
                if off:
                    self._messages[host] = off
                for sample in samples:
                    self._on_sample(sample)
                for lane, why in lost:
                    self._on_lost(self._gpus[lane], f"{why} (on {host})")
            next_tick = max(next_tick + self._interval, time.monotonic())
            self._stopping.wait(next_tick - time.monotonic())


class ClusterWatch:
    """Whether the head's GCS answers: a TCP connection to it every second (a dead GCS refuses at
    once; a cut link times out). The first miss says UNREACHABLE, an answer after that BACK, and
    `lost_after` seconds without one LOST; Ray's own calls would block instead, with no way to tell."""

    def __init__(self, address: str, on_change: Callable[[Reach, str], None], lost_after: float,
                 interval: float = 1.0):
        host, _, port = address.rpartition(":")
        self._where, self._address = (host, int(port)), address
        self._on_change, self._lost_after, self._interval = on_change, lost_after, interval
        self._stopping = threading.Event()
        self.lost = False  # said LOST: the head is gone for this session
        self._thread = threading.Thread(target=self._run, name="ray-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        silent_since: float | None = None
        while not self._stopping.wait(self._interval):
            why = _answers(self._where, max(1.0, self._interval))
            if why is None:
                if silent_since is not None:
                    silent_since = None
                    self._on_change(Reach.BACK, f"the Ray cluster's head at {self._address} answers again")
                continue
            now = time.monotonic()
            if silent_since is None:
                silent_since = now
                self._on_change(Reach.UNREACHABLE, f"the Ray cluster's head at {self._address} does not answer ({why})")
            elif now - silent_since >= self._lost_after:
                self.lost = True
                self._on_change(Reach.LOST, f"the Ray cluster's head at {self._address} has not answered for "
                                            f"{now - silent_since:.0f} s ({why})")
                return

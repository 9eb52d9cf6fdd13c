"""`--executor ray`: the lanes on a Ray cluster's GPUs, one supervisor for all of them.

Each lane holds one GPU of one node for the whole session: a placement group bundle
({"GPU": 1, "CPU": 1}) and an actor in it (ray_node.LaneWorker), so the lane's runs always land
on the same card and comparisons stay within one GPU model. A run is made here as for a local
one (the commit, the secret-free environment); its tree travels to the node as a tar of the
commit, the node runs the target command in a node-local folder in its own process group, and
its output streams back into the same parser, log file and events. The engine sees only the
executor interface of scheduler/executor.py.

Imported only for --executor ray (ray is an optional extra: autoresearch-tui[ray])."""

from __future__ import annotations

import codecs
import logging
import signal
import subprocess
import threading
import time
from typing import Callable

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from results.records import Status

from .executor import RunResult, RunSpec, classify, utcnow
from .gpus import Gpu
from .ray_node import LaneWorker
from .runparse import Progress, RunParser

log = logging.getLogger("autoresearch.ray")

PLACEMENT_TIMEOUT_S = 60.0
_WATCH_INTERVAL_S = 0.5


class ClusterError(Exception):
    """The cluster cannot give what was asked; one sentence for the user (exit 2)."""


class RayCluster:
    def __init__(self, address: str):
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING,
                     configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ClusterError(f"cannot reach the Ray cluster at {address}: {e}; start it with `ray start --head` "
                               f"(and `ray start --address HEAD:PORT` on each node)") from None
        self.address = address
        self._group = None
        self.workers: list = []
        self.described: list[dict] = []  # per lane: node_id, host, cuda_visible_devices, name, uuid, pid

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

    def executor(self, command: str) -> "RayExecutor":
        return RayExecutor(self.workers, command)

    def close(self) -> None:
        for worker in self.workers:
            ray.kill(worker)
        if self._group is not None:
            remove_placement_group(self._group)
        ray.shutdown()


class RayExecutor:
    """The executor interface (scheduler/executor.py) on the lanes' actors."""

    def __init__(self, workers: list, command: str):
        self.workers, self.command = workers, command
        self.sandbox = None  # the nodes run the command as the Ray worker's user; no bubblewrap there

    def start(self, spec: RunSpec, on_progress: Callable[[list[Progress]], None],
              on_done: Callable[[RunResult], None]) -> "RayRun":
        return RayRun(spec, self.workers[spec.lane], self.command, on_progress, on_done)


class RayRun:
    """A run on a lane's actor. `stop()` from any thread, any number of times."""

    def __init__(self, spec: RunSpec, worker, command: str, on_progress, on_done):
        self.spec, self.worker = spec, worker
        self._on_progress, self._on_done = on_progress, on_done
        self._stop_status: Status | None = None
        self._stop_deadline = 0.0
        self._lock = threading.Lock()
        self.started_at = utcnow()
        self._t0 = self._last_output = time.monotonic()
        self.pid: int | None = None  # the process on the node
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        tree = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=spec.cwd, capture_output=True)
        if tree.returncode != 0:
            raise RuntimeError(f"cannot pack the worktree for the node: {tree.stderr.decode(errors='replace')[:200]}")
        env = {k: v for k, v in spec.env.items() if k != "CUDA_VISIBLE_DEVICES"}  # the node's, from Ray
        self._stream = worker.run.remote(tree.stdout, command, env, f"lane-{spec.lane}-{spec.experiment_id}")
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
        self._thread.join(timeout)

    def _watch(self) -> None:
        """The clock: timeouts, silence, and SIGKILL for a run that ignores SIGTERM."""
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
                        if kind == "started":
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
                result = RunResult(self.spec.experiment_id, self.spec.lane, Status.CRASH, None, error=error,
                                   started_at=self.started_at, finished_at=utcnow(),
                                   seconds=time.monotonic() - self._t0)
            else:
                result = classify(self.spec, parser, exit_code, self._stop_status, self.started_at,
                                  time.monotonic() - self._t0)
        except ray.exceptions.RayError as e:  # the node or its actor died: a fault of the system, not the run
            log.warning("run %s: its Ray node failed: %s", self.spec.experiment_id, type(e).__name__)
            result = RunResult(self.spec.experiment_id, self.spec.lane, Status.INTERRUPTED, None,
                               error=f"the lane's Ray node failed ({type(e).__name__})", started_at=self.started_at,
                               finished_at=utcnow(), seconds=time.monotonic() - self._t0)
        except BaseException as e:  # noqa: BLE001 - a bug of ours must still release the lane
            log.exception("following run %s failed", self.spec.experiment_id)
            result = RunResult(self.spec.experiment_id, self.spec.lane, Status.CRASH, None,
                               error=f"supervisor error while following the run: {e!r}", started_at=self.started_at,
                               finished_at=utcnow(), seconds=time.monotonic() - self._t0)
        self._done.set()
        self._on_done(result)

"""What runs on a Ray node for one lane: an actor that holds the lane's GPU (its placement group
bundle) for the whole session and runs each experiment there as a child process in its own
process group, streaming the output back as it comes.

Standard library only, besides Ray itself: every node imports this module (the package must be
installed there, as the README says), and it must import fast and fail for no missing extra."""

from __future__ import annotations

import io
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import ray

_SMALL_CHUNK = 16384  # a short read: let lines gather, as the local executor does, before the next
_GATHER_S = 0.25


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the actor's death ends it
    except (OSError, AttributeError):
        pass


@ray.remote(max_concurrency=4)  # a run streams while stop and describe answer
class LaneWorker:
    def __init__(self):
        self._proc: subprocess.Popen | None = None

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
        return {"node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
                "cuda_visible_devices": visible, "name": name if isinstance(name, str) else name.decode(),
                "uuid": uuid if uuid is None or isinstance(uuid, str) else uuid.decode(), "pid": os.getpid()}

    def run(self, archive: bytes, command: str, env: dict, name: str):
        """A generator: ("started", pid), then output chunks (bytes), then ("exit", code)."""
        work = Path(tempfile.gettempdir()) / "autoresearch-ray" / name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(work, filter="data")
        argv = shlex.split(command)
        if argv and argv[0] in ("python", "python3"):
            argv[0] = sys.executable  # the node's own interpreter
        # Ray chose this lane's card: the run sees exactly that one, whatever the supervisor's host had.
        env = {**env, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "")}
        try:
            self._proc = subprocess.Popen(argv, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, start_new_session=True,
                                          preexec_fn=_die_with_parent)
        except OSError as e:
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

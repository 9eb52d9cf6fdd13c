"""One supervisor per repository and tag: a second one would fight over worktrees and the
frontier branch. An advisory lock (flock) is released by the kernel when the process dies,
even by kill -9, so a crash never leaves a stale lock behind."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class AlreadyRunning(Exception):
    """The message is one sentence for the user."""


class SupervisorLock:
    def __init__(self, folder: Path, tag: str):
        self.path = folder / f"{tag}.lock"
        self._fd: int | None = None

    def acquire(self) -> "SupervisorLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunning(f"another supervisor (pid {holder}) is running tag {self.path.stem} "
                                 f"on this repository; stop it first or use another --tag.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

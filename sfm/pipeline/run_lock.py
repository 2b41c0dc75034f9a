"""One run per folder: an exclusive lock on ``save_dir/run.lock`` for a training run's lifetime.

    with RunLock(cfg.save_dir):
        ...  # train

The lock is ``flock`` on the file, held by the process that trains (rank 0), so the kernel
releases it when that process ends however it ends (kill -9 included): there is never a stale
lock to remove by hand. The file says who holds it (pid, host, start time); a second run on the
same folder is refused with that. ``flock`` is per open file, so a second lock taken in the same
process is refused too.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

LOCK_NAME = "run.lock"


class RunLocked(RuntimeError):
    """The folder is in use by another run."""


class RunLock:
    """Context manager: take the lock on ``save_dir`` (created if absent) or raise :class:`RunLocked`
    naming the holder."""

    def __init__(self, save_dir):
        self.path = Path(save_dir) / LOCK_NAME
        self._fd = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = (
                os.pread(fd, 4096, 0).decode(errors="replace").strip() or "a process that has not yet written its pid"
            )
            os.close(fd)
            raise RunLocked(
                f"{self.path.parent} is in use by another run ({holder}; lock {self.path}): wait for it, "
                "stop it, or choose another --save_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(
            fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0
        )
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

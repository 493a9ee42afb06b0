"""An exclusive lock that keeps two daemons from writing one database."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from edgeward.errors import StoreError


class DatabaseLock:
    """Hold an flock on `<database>.lock` for as long as the daemon runs.

    The kernel releases the lock when the process dies, so a crash never
    leaves a stale lock behind. The file contains the holder's pid, for the
    error message of the next process that tries.
    """

    def __init__(self, database: Path) -> None:
        self._database = database
        self.path = database.with_name(database.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(
                f"database {self._database} is in use by another edgeward process "
                f"(pid {holder}); stop that process or set database.path to another file"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

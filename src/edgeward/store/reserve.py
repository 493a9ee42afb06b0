"""A reserve file beside the database that gives its space back when the disk fills.

On a full disk SQLite cannot checkpoint its WAL, because the checkpoint may
grow the database file, and it cannot delete rows, because a deletion is
written to the WAL first. The writer then had no way to make room. Removing
the reserve frees enough space for one checkpoint and one pruning
transaction; the reserve is made again once the disk has room.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

# As large as the WAL is allowed to stay after a checkpoint (database.py).
RESERVE_BYTES = 1024 * 1024


class DiskReserve:
    """A file of `size` bytes at `path`, released on a full disk and restored later."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size

    @property
    def held(self) -> bool:
        return self.path.exists()

    def restore(self) -> bool:
        """Create the reserve file when missing; True when it is in place afterwards."""
        if self.held:
            return True
        try:
            descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return True
        except OSError as error:
            log.debug("reserve file %s not created: %s", self.path, error.strerror)
            return False
        try:
            os.posix_fallocate(descriptor, 0, self.size)
        except OSError:
            os.close(descriptor)
            self.path.unlink(missing_ok=True)
            return False
        os.close(descriptor)
        return True

    def release(self) -> bool:
        """Delete the reserve file; True when it existed."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        log.warning(
            "disk full: released the %d KiB reserve file %s to checkpoint the WAL and prune",
            self.size // 1024,
            self.path,
        )
        return True

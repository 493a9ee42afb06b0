"""Master key rotation that survives being killed at any point.

The steps, each durable before the next starts:

1. Write the new master key to `<key file>.new` (mode 0600, fsync).
2. Re-key the database with `PRAGMA rekey` under the new derived key. SQLite
   commits the re-key as one transaction, so the database opens with the old
   key before the commit and with the new key after it.
3. Rewrap the data key store under the new master key (written to a new file,
   then renamed over the old one).
4. Rename `<key file>.new` over the key file.

`resolve_master_key` runs before every open. It finds out which key opens
the database and finishes or rolls back an interrupted rotation, so a crash
leaves a database that opens with the old or the new key, never neither.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edgeward.errors import KeyFileError, WrongKeyError
from edgeward.security.keys import DATABASE_KEY_INFO, KEY_BYTES, derive_key, load_master_key
from edgeward.security.keystore import KeyStore, master_fingerprint, store_fingerprint
from edgeward.store.audit import AuditEvent, insert_event, read_head
from edgeward.store.database import open_database

log = logging.getLogger(__name__)

Progress = Callable[[float], None]


def pending_key_path(key_file: Path) -> Path:
    return key_file.with_name(key_file.name + ".new")


def keystore_path(database: Path) -> Path:
    return database.with_name(database.name + ".keys")


def resolve_master_key(key_file: Path, database: Path) -> bytes:
    """Return the master key that opens the database, finishing an interrupted rotation first."""
    pending = pending_key_path(key_file)
    current = load_master_key(key_file)
    if not pending.exists():
        return current
    new = load_master_key(pending)
    if not database.exists() or _opens(database, current):
        # The re-key never committed: the new key was never used.
        log.warning(
            "found an unfinished key rotation that did not re-key %s; removing %s",
            database,
            pending,
        )
        _rewrap_if_needed(database, new_master=current, old_master=new)
        pending.unlink()
        return current
    if not _opens(database, new):
        raise WrongKeyError(
            f"database {database} opens with neither {key_file} nor {pending}; restore the key file"
        )
    log.warning("finishing an interrupted key rotation of %s", database)
    _rewrap_if_needed(database, new_master=new, old_master=current)
    _replace(pending, key_file)
    return new


def rotate(key_file: Path, database: Path, progress: Progress | None = None) -> None:
    """Give the database and the data key store a new master key. The daemon must be stopped."""
    old = resolve_master_key(key_file, database)
    new = secrets.token_bytes(KEY_BYTES)
    pending = pending_key_path(key_file)
    _write_key(pending, new)

    connection = open_database(database, derive_key(old, DATABASE_KEY_INFO), writer=True)
    try:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        _rekey(connection, database, derive_key(new, DATABASE_KEY_INFO), progress)
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        event = AuditEvent(
            time.time(), f"uid:{os.getuid()}", "keys.rotate", {"database": str(database)}
        )
        connection.execute("BEGIN IMMEDIATE")
        insert_event(connection, read_head(connection), event)
        connection.execute("COMMIT")
    finally:
        connection.close()

    _rewrap_if_needed(database, new_master=new, old_master=old)
    _replace(pending, key_file)
    log.info("rotated the master key of %s", database)


def _rekey(connection: object, database: Path, key: bytes, progress: Progress | None) -> None:
    # PRAGMA rekey rewrites every page in one transaction and gives no progress
    # callback, so progress is estimated from the WAL's growth against the file.
    total = max(1, database.stat().st_size)
    done = threading.Event()

    def report() -> None:
        wal = database.with_name(database.name + "-wal")
        while not done.wait(0.2):
            size = wal.stat().st_size if wal.exists() else 0
            if progress is not None:
                progress(min(0.99, size / total))

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    try:
        connection.execute(f"PRAGMA rekey = \"x'{key.hex()}'\"")  # type: ignore[attr-defined]
    finally:
        done.set()
        reporter.join()
    if progress is not None:
        progress(1.0)


def _opens(database: Path, master: bytes) -> bool:
    try:
        open_database(database, derive_key(master, DATABASE_KEY_INFO)).close()
    except WrongKeyError:
        return False
    return True


def _rewrap_if_needed(database: Path, new_master: bytes, old_master: bytes) -> None:
    path = keystore_path(database)
    found = store_fingerprint(path)
    if found is None or found == master_fingerprint(new_master):
        return
    if found != master_fingerprint(old_master):
        raise KeyFileError(
            f"data key store {path} is wrapped by neither the old nor the new master key"
        )
    KeyStore(path, old_master).rewrap(new_master)


def _write_key(path: Path, key: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(key.hex() + "\n")
        file.flush()
        os.fsync(file.fileno())
    _sync_directory(path.parent)


def _replace(source: Path, target: Path) -> None:
    os.replace(source, target)
    _sync_directory(target.parent)


def _sync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

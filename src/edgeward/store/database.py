"""Open the SQLCipher database with a raw 256-bit key.

A raw key (x'...') skips SQLCipher's PBKDF2 rounds: opening costs about a
millisecond instead of about 100 ms with a passphrase. The key is checked by
a read before any statement that could write, so a wrong key never changes
the file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import sqlcipher3

from edgeward.errors import StoreError, WrongKeyError
from edgeward.store.schema import migrate

log = logging.getLogger(__name__)

Connection = Any

# Page cache per connection, in KiB. SQLCipher 4 raises SQLite's default to
# 8000 KiB, and the daemon opens about ten connections, so a drain that reads
# the whole outbox grew the daemon by tens of MiB. Readers run short queries
# over indexes; the writer keeps more of the B-tree pages it appends to.
READER_CACHE_KIB = 1024
WRITER_CACHE_KIB = 4096
WAL_CHECKPOINT_PAGES = 256


def open_database(path: Path, key: bytes, *, writer: bool = False) -> Connection:
    """Open (and, for the writer, create and migrate) the encrypted database.

    Raises WrongKeyError when the key does not decrypt an existing file.
    """
    exists = path.exists() and path.stat().st_size > 0
    if not exists and not writer:
        raise StoreError(f"database {path} does not exist yet; start the daemon once to create it")
    if not exists:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(
                f"cannot create the folder of database {path}: {error.strerror}"
            ) from error

    try:
        connection = sqlcipher3.connect(str(path), isolation_level=None, check_same_thread=False)
    except sqlcipher3.Error as error:
        raise StoreError(f"cannot open database {path}: {error}") from error

    try:
        _apply_key(connection, key, path)
        _configure(connection, WRITER_CACHE_KIB if writer else READER_CACHE_KIB)
        if writer:
            migrate(connection, str(path))
    except sqlcipher3.Error as error:
        connection.close()
        raise StoreError(
            f"database {path} could not be prepared: {error}; check free space and permissions"
        ) from error
    except BaseException:
        connection.close()
        raise
    return connection


def _apply_key(connection: Connection, key: bytes, path: Path) -> None:
    if len(key) != 32:
        raise StoreError(f"database key must be 32 bytes, got {len(key)}")
    # Without this SQLCipher prints its own "hmac check failed" lines to
    # stderr for a wrong key, before WrongKeyError says what happened.
    connection.execute("PRAGMA cipher_log_level = NONE")
    connection.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    try:
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlcipher3.DatabaseError as error:
        raise WrongKeyError(
            f"database {path} could not be decrypted: the key is wrong or the file is not an "
            "edgeward database. The file was not changed; check database.key_file"
        ) from error


def _configure(connection: Connection, cache_kib: int) -> None:
    # WAL lets the API and the uplink read while the writer commits;
    # synchronous=NORMAL in WAL mode loses at most the last commits on power
    # loss, never the database's consistency.
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")
    connection.execute("PRAGMA secure_delete = ON")
    connection.execute("PRAGMA foreign_keys = ON")
    connection.execute("PRAGMA busy_timeout = 5000")
    connection.execute(f"PRAGMA cache_size = -{cache_kib}")
    # Checkpoint every 1 MiB of WAL instead of 4 MiB, and truncate the WAL
    # file back to 1 MiB after a checkpoint. On a nearly full disk a large
    # WAL left no room for the checkpoint that would have freed it.
    connection.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
    connection.execute(f"PRAGMA journal_size_limit = {WAL_CHECKPOINT_PAGES * 4096}")

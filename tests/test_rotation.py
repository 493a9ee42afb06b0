"""Master key rotation: the CLI, and SIGKILL at many points of a re-key of a 50 MB database."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeward.errors import StoreError, WrongKeyError
from edgeward.security.keys import DATABASE_KEY_INFO, derive_key, load_master_key
from edgeward.security.keystore import KeyStore
from edgeward.security.rotation import keystore_path, pending_key_path, resolve_master_key
from edgeward.store.database import open_database
from edgeward.store.rows import ResultRow
from edgeward.store.writer import Writer

pytestmark = pytest.mark.integration

ROWS = 110_000


def build_database(tmp_path: Path) -> tuple[Path, Path, Path]:
    key_file = tmp_path / "master.key"
    database = tmp_path / "edgeward.db"
    master = load_master_key(key_file, create=True)
    connection = open_database(database, derive_key(master, DATABASE_KEY_INFO), writer=True)
    writer = Writer(connection)
    writer.start()
    payload = os.urandom(400)
    for start in range(0, ROWS, 5000):
        writer.put(
            [
                ResultRow(
                    "s", "c", float(i), "0" * 64, "a", 0.5, False, struct.pack("<d", 0.5), payload
                )
                for i in range(start, min(ROWS, start + 5000))
            ]
        )
    assert writer.stop()
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    KeyStore(keystore_path(database), master).key_for("heart/alice")

    config = tmp_path / "edgeward.yaml"
    config.write_text(f"device_id: d\ndatabase: {{path: {database}, key_file: {key_file}}}\n")
    return key_file, database, config


def rotate_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "edgeward.cli", "keys", "rotate", "--config", str(config)]


def opening_key(key_file: Path, database: Path) -> bytes:
    """Return which of the key file and its pending .new file opens the database."""
    candidates = [key_file, pending_key_path(key_file)]
    for path in candidates:
        if not path.exists():
            continue
        try:
            master = load_master_key(path)
            open_database(database, derive_key(master, DATABASE_KEY_INFO)).close()
        except (WrongKeyError, StoreError):
            continue
        return master
    raise AssertionError("the database opens with neither the old nor the new key")


def test_rotate_survives_sigkill_at_many_points(tmp_path: Path) -> None:
    key_file, database, config = build_database(tmp_path)
    assert database.stat().st_size >= 50 * 1024 * 1024
    data_key = KeyStore(keystore_path(database), load_master_key(key_file)).key_for("heart/alice")

    delays = [0.3 + 0.05 * i for i in range(16)]
    outcomes = set()
    for delay in delays:
        before = load_master_key(key_file)
        process = subprocess.Popen(rotate_command(config), stderr=subprocess.DEVNULL)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()

        master = opening_key(key_file, database)
        outcomes.add("old" if master == before else "new")
        resolved = resolve_master_key(key_file, database)
        assert resolved == master
        assert not pending_key_path(key_file).exists()
        connection = open_database(database, derive_key(resolved, DATABASE_KEY_INFO))
        assert connection.execute("SELECT count(*) FROM results").fetchone()[0] == ROWS
        connection.close()
        assert KeyStore(keystore_path(database), resolved).existing_key("heart/alice") == data_key

    print(f"kill outcomes over {len(delays)} points: {sorted(outcomes)}")


def test_rotate_command_changes_key_and_keeps_data(tmp_path: Path) -> None:
    key_file, database, config = build_database(tmp_path)
    old = load_master_key(key_file)
    result = subprocess.run(rotate_command(config), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "re-keying [" in result.stderr
    new = load_master_key(key_file)
    assert new != old
    with pytest.raises(WrongKeyError):
        open_database(database, derive_key(old, DATABASE_KEY_INFO))
    connection = open_database(database, derive_key(new, DATABASE_KEY_INFO))
    assert connection.execute("SELECT count(*) FROM results").fetchone()[0] == ROWS
    assert connection.execute("SELECT event FROM audit_log").fetchall() == [("keys.rotate",)]
    connection.close()

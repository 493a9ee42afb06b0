"""The SQLCipher store: keys, wrong keys, schema versions, the writer."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path
from typing import Any

import pytest
import sqlcipher3

from edgeward.errors import KeyFileError, SchemaError, StoreError, WrongKeyError
from edgeward.security.keys import DATABASE_KEY_INFO, derive_key, load_master_key, master_key_path
from edgeward.store.database import open_database
from edgeward.store.lock import DatabaseLock
from edgeward.store.queries import count_rows, query_results, unsent_page
from edgeward.store.rows import MarkSent, ResultRow, SummaryRow
from edgeward.store.schema import SCHEMA_VERSION
from edgeward.store.writer import Writer

KEY = bytes(range(32))
MARKER = "plaintextmarkerkoala"


def result(ts: float, stream: str = MARKER) -> ResultRow:
    return ResultRow(
        stream,
        "inference",
        ts,
        "0" * 64,
        f"label-{MARKER}",
        0.5,
        False,
        struct.pack("<d", 0.5),
        b"\x01",
    )


def summary(seq: int) -> SummaryRow:
    return SummaryRow(
        MARKER,
        "summary",
        seq,
        0.0,
        10.0,
        1,
        "{}",
        0.5,
        0.5,
        0,
        "0" * 64,
        1.0,
        f"m{seq}",
        f"edgeward/v1/d/summary/{MARKER}",
        b'{"stream": "' + MARKER.encode() + b'"}',
    )


def written_database(path: Path) -> None:
    connection = open_database(path, KEY, writer=True)
    writer = Writer(connection, batch_size=10, batch_interval=0.01)
    writer.start()
    writer.put([result(float(i)) for i in range(50)])
    writer.put(summary(1))
    writer.stop()
    connection.close()


def file_bytes(path: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes()
        for p in sorted(path.parent.iterdir())
        if p.name.startswith(path.name)
    }


def test_writer_commits_results_and_outbox_together(tmp_path: Path) -> None:
    path = tmp_path / "db"
    written_database(path)
    connection = open_database(path, KEY)
    counts = count_rows(connection)
    assert counts["results"] == 50
    assert counts["summaries"] == 1
    assert counts["outbox_backlog"] == 1
    assert unsent_page(connection, "summary", 0, 10)[0][1] == f"edgeward/v1/d/summary/{MARKER}"
    assert len(query_results(connection, MARKER, 10.0, 100)) == 40


def test_mark_sent_clears_backlog(tmp_path: Path) -> None:
    path = tmp_path / "db"
    written_database(path)
    connection = open_database(path, KEY, writer=True)
    writer = Writer(connection)
    writer.start()
    outbox_id = unsent_page(connection, "summary", 0, 1)[0][0]
    writer.put(MarkSent([outbox_id], 2.0))
    writer.stop()
    assert count_rows(connection)["outbox_backlog"] == 0


def test_database_files_hold_no_plaintext(tmp_path: Path) -> None:
    path = tmp_path / "db"
    connection = open_database(path, KEY, writer=True)
    writer = Writer(connection)
    writer.start()
    writer.put([result(float(i)) for i in range(500)])
    writer.put(summary(1))
    assert writer.flush(10)
    files = file_bytes(path)
    assert set(files) == {"db", "db-wal", "db-shm"}
    for name, data in files.items():
        assert MARKER.encode() not in data, name
    writer.stop()
    connection.close()


def test_wrong_key_raises_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "db"
    written_database(path)
    before = file_bytes(path)
    for writer in (False, True):
        with pytest.raises(WrongKeyError, match="could not be decrypted"):
            open_database(path, bytes(32), writer=writer)
    assert file_bytes(path) == before


def test_plain_sqlite_file_is_wrong_key(tmp_path: Path) -> None:
    path = tmp_path / "plain.db"
    path.write_bytes(b"SQLite format 3\x00" + bytes(4080))
    with pytest.raises(WrongKeyError):
        open_database(path, KEY, writer=True)


def test_newer_schema_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "db"
    written_database(path)
    connection = open_database(path, KEY, writer=True)
    connection.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    connection.close()
    with pytest.raises(
        SchemaError, match=f"schema version {SCHEMA_VERSION + 1}, newer than this edgeward"
    ):
        open_database(path, KEY, writer=True)


def test_reader_needs_existing_database(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist yet"):
        open_database(tmp_path / "missing.db", KEY)


def test_key_file_created_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "master.key"
    key = load_master_key(path, create=True)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_master_key(path) == key


def test_missing_key_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="not found"):
        load_master_key(tmp_path / "master.key")


def test_world_readable_key_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_text("ab" * 32)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="has mode 0644"):
        load_master_key(path)


def test_malformed_key_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_text("not a key")
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError, match="must contain 64 hex digits"):
        load_master_key(path)


def test_derived_keys_differ_by_purpose() -> None:
    assert derive_key(KEY, DATABASE_KEY_INFO) != derive_key(KEY, b"other")
    assert derive_key(KEY, DATABASE_KEY_INFO) == derive_key(KEY, DATABASE_KEY_INFO)


class FailingCommits:
    """Wrap a real connection so that its next `failures` COMMITs raise SQLITE_FULL."""

    def __init__(self, connection: Any, failures: int) -> None:
        self._connection = connection
        self.failures = failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT" and self.failures > 0:
            self.failures -= 1
            self._connection.execute("ROLLBACK")
            raise sqlcipher3.OperationalError("database or disk is full")
        return self._connection.execute(sql, *args)


def test_writer_retries_until_commit_succeeds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    connection = open_database(tmp_path / "db", KEY, writer=True)
    failing = FailingCommits(connection, failures=2)
    writer = Writer(failing, batch_interval=0.01)
    writer.start()
    writer.put([result(1.0)])
    assert writer.flush(10)
    assert writer.stop()
    assert writer.counters.failed_transactions == 2
    assert writer.counters.results == 1
    assert "database write failed: database or disk is full" in caplog.text
    assert "cannot rollback" not in caplog.text


def test_writer_gives_up_at_stop_and_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    connection = open_database(tmp_path / "db", KEY, writer=True)
    writer = Writer(FailingCommits(connection, failures=10**6), batch_interval=0.01)
    writer.start()
    writer.put([result(float(i)) for i in range(5)])
    writer.put(summary(1))
    assert writer.stop(timeout=1.5) is False
    assert writer.counters.abandoned == 6
    assert writer.put([result(9.0)]) is False
    assert "6 results and summaries were not committed" in caplog.text


def test_database_lock_rejects_second_holder(tmp_path: Path) -> None:
    first = DatabaseLock(tmp_path / "db")
    first.acquire()
    with pytest.raises(
        StoreError, match=rf"in use by another edgeward process \(pid {os.getpid()}\)"
    ):
        DatabaseLock(tmp_path / "db").acquire()
    first.release()
    second = DatabaseLock(tmp_path / "db")
    second.acquire()
    second.release()


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o400, 0o440])
def test_key_file_modes_accepted(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "master.key"
    path.write_text("ab" * 32)
    os.chmod(path, mode)
    assert load_master_key(path) == bytes.fromhex("ab" * 32)


@pytest.mark.parametrize("mode", [0o660, 0o604, 0o700])
def test_key_file_modes_rejected(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "master.key"
    path.write_text("ab" * 32)
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match=f"has mode {mode:04o}"):
        load_master_key(path)


def test_master_key_from_systemd_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "edgeward-key").write_text("cd" * 32)
    os.chmod(tmp_path / "edgeward-key", 0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    path = master_key_path(Path("/nonexistent"), "edgeward-key")
    assert load_master_key(path) == bytes.fromhex("cd" * 32)


def test_credential_without_systemd_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(KeyFileError, match="CREDENTIALS_DIRECTORY is not set"):
        master_key_path(tmp_path / "missing.key", "edgeward-key")


def test_credential_outside_service_reads_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    key_file = tmp_path / "master.key"
    key_file.write_text("ab" * 32)
    assert master_key_path(key_file, "edgeward-key") == key_file

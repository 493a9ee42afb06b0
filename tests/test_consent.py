"""The consent ledger and the audit chain: pure rules, the store, and the daemon end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlcipher3

from conftest import REALDATA, Broker, DaemonProcess, Recorder, wait_for
from edgeward import client
from edgeward.security.keys import DATABASE_KEY_INFO, derive_key, load_master_key
from edgeward.store.audit import AuditEvent, verify_chain
from edgeward.store.consent import ConsentRecord, ConsentState
from edgeward.store.database import open_database
from edgeward.store.rows import LedgerEntry
from edgeward.store.schema import MIGRATIONS, SCHEMA_VERSION, split_statements
from edgeward.store.writer import Writer

KEY = bytes(range(32))


def record(
    action: str, classes: tuple[str, ...] = ("a",), at: float = 0.0, **fields: Any
) -> ConsentRecord:
    return ConsentRecord("alice", "care", classes, action, at, **fields)  # type: ignore[arg-type]


def test_state_grant_then_revoke() -> None:
    state = ConsentState.from_records([record("grant", ("a", "b")), record("revoke", ("a",))])
    assert state.grant_for("alice", "care", "a", 1.0) is None
    assert state.grant_for("alice", "care", "b", 1.0) is not None


def test_state_revoke_without_classes_revokes_all() -> None:
    state = ConsentState.from_records([record("grant", ("a", "b")), record("revoke", ())])
    assert state.grants == {}


def test_state_grant_expires() -> None:
    state = ConsentState.from_records([record("grant", expires_at=10.0)])
    assert state.grant_for("alice", "care", "a", 9.9) is not None
    assert state.grant_for("alice", "care", "a", 10.0) is None
    assert state.missing_purpose("alice", ["care"], "a", 11.0) == "care"


def audited_database(path: Path, events: int) -> None:
    connection = open_database(path, KEY, writer=True)
    writer = Writer(connection, batch_interval=0.01)
    writer.start()
    for i in range(events):
        entry = LedgerEntry(None, [AuditEvent(float(i), "test", "test.event", {"n": i})])
        writer.put(entry)
        assert entry.done.wait(10)
    writer.stop()
    connection.close()


def test_audit_verify_accepts_intact_chain(tmp_path: Path) -> None:
    audited_database(tmp_path / "db", 5)
    result = verify_chain(open_database(tmp_path / "db", KEY))
    assert result.ok
    assert result.rows == 5


def test_audit_verify_catches_edited_row(tmp_path: Path) -> None:
    audited_database(tmp_path / "db", 5)
    connection = open_database(tmp_path / "db", KEY)
    connection.execute("UPDATE audit_log SET details = '{\"n\":99}' WHERE id = 3")
    result = verify_chain(connection)
    assert result.broken_id == 3
    assert "changed after it was written" in str(result.reason)


def test_audit_verify_catches_deleted_row(tmp_path: Path) -> None:
    audited_database(tmp_path / "db", 5)
    connection = open_database(tmp_path / "db", KEY)
    connection.execute("DELETE FROM audit_log WHERE id = 2")
    result = verify_chain(connection)
    assert result.broken_id == 3
    assert "does not follow row 1" in str(result.reason)


def test_audit_verify_catches_deleted_last_row(tmp_path: Path) -> None:
    audited_database(tmp_path / "db", 5)
    connection = open_database(tmp_path / "db", KEY)
    connection.execute("DELETE FROM audit_log WHERE id = 5")
    result = verify_chain(connection)
    assert result.broken_id == 5
    assert "deleted from the end" in str(result.reason)


def test_consent_ledger_is_append_only(tmp_path: Path) -> None:
    connection = open_database(tmp_path / "db", KEY, writer=True)
    connection.execute(
        "INSERT INTO consents (subject, purpose, data_classes, action, recorded_at, actor, method)"
        " VALUES ('alice', 'care', '[]', 'grant', 0, 'test', 'test')"
    )
    with pytest.raises(Exception, match="append-only"):
        connection.execute("UPDATE consents SET action = 'revoke'")
    with pytest.raises(Exception, match="append-only"):
        connection.execute("DELETE FROM consents")


def test_migration_from_schema_version_1(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    raw = sqlcipher3.connect(str(path), isolation_level=None)
    raw.execute(f"PRAGMA key = \"x'{KEY.hex()}'\"")
    for statement in split_statements(MIGRATIONS[0]):
        raw.execute(statement)
    raw.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    raw.execute("INSERT INTO schema_version VALUES (1)")
    raw.execute(
        "INSERT INTO summaries (stream, data_class, seq, period_start, period_end, windows, label_counts,"
        " mean_score, max_score, anomalies, model_sha256, created_at) VALUES"
        " ('s', 'summary', 1, 0, 10, 1, '{}', 0.5, 0.5, 0, 'x', 1)"
    )
    raw.execute(
        "INSERT INTO outbox (summary_id, message_id, topic, payload, created_at) VALUES (1, 'm1', 't', x'00', 1)"
    )
    raw.close()

    connection = open_database(path, KEY, writer=True)
    assert connection.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    assert connection.execute("SELECT count(*) FROM consents").fetchone()[0] == 0
    assert connection.execute("SELECT message_id, withheld_at FROM outbox").fetchall() == [
        ("m1", None)
    ]


CONFIG = """device_id: consent-device
database: {{path: {tmp}/edgeward.db, key_file: {tmp}/master.key, create_key: true, batch_interval: 0.05}}
api: {{socket: {tmp}/api.sock}}
mqtt: {{host: 127.0.0.1, port: {port}}}
runtime: {{tflite: tflite-runtime}}
summaries: {{interval: 1s}}
purposes:
  wellbeing: {{description: heart-rate trends for the care team}}
data_classes:
  vitals: {{tier: confidential, purposes: [wellbeing], erase_on_revoke: true}}
  vitals-summary: {{tier: internal, purposes: [wellbeing], may_leave_device: true}}
streams:
  - name: pulse
    subject: alice
    source: {{type: synthetic, channels: 1, rate_hz: 100}}
    window: {{size: 1, hop: 1}}
    model: {{path: {model}, kind: regression}}
    data_class: vitals
    summary_class: vitals-summary
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeward.cli", *args], capture_output=True, text=True, timeout=60
    )


def stored_results(tmp_path: Path) -> int:
    key = derive_key(load_master_key(tmp_path / "master.key"), DATABASE_KEY_INFO)
    connection = open_database(tmp_path / "edgeward.db", key)
    count: int = connection.execute("SELECT count(*) FROM results").fetchone()[0]
    connection.close()
    return count


@pytest.mark.integration
def test_consent_controls_storage_and_sync(
    tmp_path: Path, broker: Broker, recorder: Recorder
) -> None:
    config = tmp_path / "edgeward.yaml"
    model = REALDATA / "models" / "hello_world_int8.tflite"
    config.write_text(CONFIG.format(tmp=tmp_path, port=broker.port, model=model))
    socket_path = tmp_path / "api.sock"
    sock = ["--socket", str(socket_path)]
    daemon = DaemonProcess(config)
    try:
        daemon.wait_ready(socket_path)
        time.sleep(2)
        status = client.get(socket_path, "/v1/status")
        assert status["streams"]["pulse"]["withheld_no_consent"] > 100
        assert stored_results(tmp_path) == 0
        assert recorder.summaries() == []

        for bad, message in [
            (["--subject", "bob"], "unknown subject 'bob'"),
            (["--purpose", "ads"], "unknown purpose 'ads'"),
            (["--class", "nope"], "unknown data class 'nope'"),
        ]:
            args = {"--subject": "alice", "--purpose": "wellbeing"}
            extra = []
            for i in range(0, len(bad), 2):
                if bad[i] in args:
                    args[bad[i]] = bad[i + 1]
                else:
                    extra += bad[i : i + 2]
            flat = [item for pair in args.items() for item in pair]
            result = cli("consent", "grant", *flat, *extra, *sock)
            assert result.returncode == 1
            assert message in result.stderr

        granted = cli("consent", "grant", "--subject", "alice", "--purpose", "wellbeing", *sock)
        assert granted.returncode == 0, granted.stderr
        wait_for(lambda: stored_results(tmp_path) > 50, 10, "no results stored after the grant")
        wait_for(lambda: len(recorder.summaries()) >= 2, 10, "no summary synced after the grant")

        revoked = cli("consent", "revoke", "--subject", "alice", "--purpose", "wellbeing", *sock)
        revoked_at = time.time()
        assert revoked.returncode == 0, revoked.stderr
        assert "erased" in revoked.stdout
        time.sleep(1.0)
        after_one_second = stored_results(tmp_path)
        synced_after_one_second = len(recorder.summaries())
        time.sleep(2.0)
        assert stored_results(tmp_path) == after_one_second == 0
        assert len(recorder.summaries()) == synced_after_one_second
        assert all(s["period_end"] <= revoked_at + 1 for s in recorder.summaries())

        expiring = cli(
            "consent",
            "grant",
            "--subject",
            "alice",
            "--purpose",
            "wellbeing",
            "--expires",
            "3s",
            *sock,
        )
        assert expiring.returncode == 0, expiring.stderr
        wait_for(
            lambda: stored_results(tmp_path) > 0, 5, "no results stored after the second grant"
        )
        time.sleep(4.0)
        stopped = stored_results(tmp_path)
        time.sleep(1.5)
        assert stored_results(tmp_path) == stopped

        history = cli("consent", "history", "--subject", "alice", *sock)
        assert history.stdout.count("grant ") == 2
        assert history.stdout.count("revoke") == 1
        exported = tmp_path / "alice.jsonl"
        export = cli("export", "--subject", "alice", "--output", str(exported), *sock)
        assert export.returncode == 0, export.stderr
        lines = [json.loads(line) for line in exported.read_text().splitlines()]
        tables = [line["table"] for line in lines]
        assert tables.count("consents") == 3
        assert tables.count("results") == stored_results(tmp_path)
        assert {line["stream"] for line in lines if line["table"] == "results"} == {"pulse"}
        nowhere = cli(
            "export", "--subject", "alice", "--output", str(tmp_path / "no" / "a.jsonl"), *sock
        )
        assert nowhere.returncode == 1
        assert "cannot write the export to" in nowhere.stderr
        assert "Traceback" not in nowhere.stderr
        assert exported.stat().st_mode & 0o077 == 0
        unknown = cli("export", "--subject", "mallory", *sock)
        assert unknown.returncode == 1
        assert "unknown subject 'mallory'" in unknown.stderr

        verify = cli("audit", "verify", *sock)
        assert verify.returncode == 0, verify.stdout
        assert "audit log OK:" in verify.stdout
        assert daemon.terminate() == 0
    finally:
        daemon.kill()

    key = derive_key(load_master_key(tmp_path / "master.key"), DATABASE_KEY_INFO)
    connection = open_database(tmp_path / "edgeward.db", key)
    events = connection.execute("SELECT event, details FROM audit_log ORDER BY id").fetchall()
    connection.close()
    names = [event for event, _ in events]
    assert names.count("consent.grant") == 2
    assert names.count("consent.revoke") == 1
    assert names.count("export.subject") == 1
    egress = [
        record
        for event, details in events
        if event == "egress"
        for record in json.loads(details)["messages"]
    ]
    assert egress
    assert all(record["consent_grants"] and record["bytes"] > 0 for record in egress)
    assert {message_id for record in egress for message_id in record["message_ids"]} >= {
        s["message_id"] for s in recorder.summaries()
    }


@pytest.mark.integration
def test_revoke_withdraws_queued_summaries(
    tmp_path: Path, broker: Broker, recorder: Recorder
) -> None:
    config = tmp_path / "edgeward.yaml"
    model = REALDATA / "models" / "hello_world_int8.tflite"
    config.write_text(CONFIG.format(tmp=tmp_path, port=broker.port, model=model))
    socket_path = tmp_path / "api.sock"
    sock = ["--socket", str(socket_path)]
    broker.stop()
    daemon = DaemonProcess(config)
    try:
        daemon.wait_ready(socket_path)
        granted = cli("consent", "grant", "--subject", "alice", "--purpose", "wellbeing", *sock)
        assert granted.returncode == 0, granted.stderr
        wait_for(
            lambda: client.get(socket_path, "/v1/status")["store"]["outbox_backlog"] >= 3,
            10,
            "no summary queued while the broker is down",
        )

        revoked = cli("consent", "revoke", "--subject", "alice", "--purpose", "wellbeing", *sock)
        assert revoked.returncode == 0, revoked.stderr
        assert "withdrew" in revoked.stdout
        assert "unsent messages of class vitals-summary" in revoked.stdout
        # Withdrawn in the revocation's own transaction, before the command returned.
        store = client.get(socket_path, "/v1/status")["store"]
        assert store["outbox_backlog"] == 0
        assert store["outbox_withheld"] >= 3

        broker.start()
        wait_for(
            lambda: client.get(socket_path, "/v1/status")["mqtt"]["connected"],
            10,
            "the daemon did not reconnect",
        )
        time.sleep(2.0)
        assert recorder.summaries() == []
        assert daemon.terminate() == 0
    finally:
        daemon.kill()

    key = derive_key(load_master_key(tmp_path / "master.key"), DATABASE_KEY_INFO)
    connection = open_database(tmp_path / "edgeward.db", key)
    kept = connection.execute("SELECT count(*) FROM summaries").fetchone()[0]
    revoke = connection.execute(
        "SELECT details FROM audit_log WHERE event = 'consent.revoke'"
    ).fetchone()[0]
    connection.close()
    # The summaries stay on the device; only their sending was withdrawn.
    assert kept >= 3
    assert json.loads(revoke)["withdrawn_messages"]["vitals-summary"] >= 3


def test_state_in_force_narrows_to_remaining_classes() -> None:
    state = ConsentState.from_records([record("grant", ("a", "b")), record("revoke", ("b",))])
    [grant] = state.in_force(1.0)
    assert grant.data_classes == ("a",)

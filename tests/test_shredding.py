"""Restricted-tier sealing and crypto-shredding through the daemon."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MODELS, DaemonProcess, wait_for
from edgeward import client
from edgeward.errors import ApiError
from edgeward.security.keys import DATABASE_KEY_INFO, derive_key, load_master_key
from edgeward.security.keystore import KeyStore, scope_name
from edgeward.store.database import open_database
from edgeward.store.sealed import unseal_result

pytestmark = pytest.mark.integration

LABELS = ["calmmarkerzq", "alertmarkerzq"]

CONFIG = """device_id: shred-device
database: {{path: {tmp}/data/edgeward.db, key_file: {tmp}/master.key, create_key: true, batch_interval: 0.05}}
api: {{socket: {tmp}/api.sock}}
mqtt: {{enabled: false}}
data_classes:
  heart: {{tier: restricted, retention: 7d}}
  summary: {{tier: internal}}
streams:
  - name: wrist
    subject: alice
    source: {{type: synthetic, channels: 3, rate_hz: 400}}
    window: {{size: 32, hop: 16}}
    model: {{path: {model}, labels: {labels}}}
    data_class: heart
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeward.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_erase_shreds_sealed_rows_in_old_copies(tmp_path: Path) -> None:
    config = tmp_path / "edgeward.yaml"
    model = MODELS / "demo_anomaly_int8.tflite"
    config.write_text(CONFIG.format(tmp=tmp_path, model=model, labels=LABELS))
    socket_path = tmp_path / "api.sock"
    database = tmp_path / "data" / "edgeward.db"
    key = None
    daemon = DaemonProcess(config)
    try:
        daemon.wait_ready(socket_path)
        key = derive_key(load_master_key(tmp_path / "master.key"), DATABASE_KEY_INFO)

        def stored() -> int:
            connection = open_database(database, key)
            count: int = connection.execute("SELECT count(*) FROM results").fetchone()[0]
            connection.close()
            return count

        wait_for(lambda: stored() > 20, 20, "no sealed results stored")
        rows = client.get(socket_path, "/v1/results", {"limit": 5})["results"]
        assert all(row["sealed"] and row["readable"] for row in rows)
        assert {row["label"] for row in rows} <= set(LABELS)

        connection = open_database(database, key)
        plain = connection.execute(
            "SELECT label, score, outputs, raw_output FROM results"
        ).fetchall()
        connection.close()
        for label, score, outputs, raw_output in plain:
            assert label is None
            assert score == 0.0
            assert outputs == b""
            assert b"markerzq" not in raw_output

        backup = tmp_path / "backup"
        backup.mkdir()
        for path in database.parent.iterdir():
            if path.name.startswith("edgeward.db") and not path.name.endswith((".keys", ".lock")):
                shutil.copy(path, backup / path.name)

        erased = cli("erase", "--subject", "alice", "--socket", str(socket_path))
        assert erased.returncode == 0, erased.stderr
        assert "destroyed the data key of class heart for subject alice" in erased.stdout
        verify = cli("audit", "verify", "--socket", str(socket_path))
        assert verify.returncode == 0, verify.stdout
        assert daemon.terminate() == 0
    finally:
        daemon.kill()

    keystore = KeyStore(
        database.with_name("edgeward.db.keys"), load_master_key(tmp_path / "master.key")
    )
    old = open_database(backup / "edgeward.db", key)
    sealed = old.execute(
        "SELECT data_class, stream, raw_output FROM results WHERE sealed = 1"
    ).fetchall()
    old.close()
    assert len(sealed) > 20
    current_key = keystore.existing_key(scope_name("heart", "alice"))
    for data_class, stream, blob in sealed:
        assert unseal_result(current_key, data_class, stream, blob) is None

    live = open_database(database, key)
    remaining = live.execute("SELECT data_class, stream, raw_output FROM results").fetchall()
    live.close()
    assert all(blob not in {b for _, _, b in sealed} for _, _, blob in remaining)


def test_flipped_byte_is_reported_as_tampering(tmp_path: Path) -> None:
    config = tmp_path / "edgeward.yaml"
    model = MODELS / "demo_anomaly_int8.tflite"
    text = CONFIG.format(tmp=tmp_path, model=model, labels=LABELS).replace(
        "rate_hz: 400", "rate_hz: 4000"
    )
    config.write_text(text)
    socket_path = tmp_path / "api.sock"
    database = tmp_path / "data" / "edgeward.db"

    first = DaemonProcess(config, "--duration", "3")
    assert first.wait(timeout=60) == 0, first.stderr
    key = derive_key(load_master_key(tmp_path / "master.key"), DATABASE_KEY_INFO)
    original = database.read_bytes()
    assert len(original) > 30 * 4096
    page = _page_only_results_read(database, original, key)

    daemon = DaemonProcess(config)
    try:
        daemon.wait_ready(socket_path)
        check = cli("store", "check", "--socket", str(socket_path))
        assert check.returncode == 1
        assert f"HMAC verification failed for page {page}" in check.stdout
        with pytest.raises(ApiError, match="500 the database could not be read"):
            client.get(socket_path, "/v1/results", {"limit": 10000})
        assert daemon.terminate() == 0
    finally:
        daemon.kill()


def _page_only_results_read(database: Path, original: bytes, key: bytes) -> int:
    """Flip a byte of a page that reading results needs but starting and writing do not.

    A page the daemon reads at start would stop it before the API is up, and
    one an insert needs would make it exit with uncommitted rows.
    """
    pages = len(original) // 4096
    for page in range(pages // 2, pages):
        data = bytearray(original)
        data[4096 * (page - 1) + 100] ^= 0x01
        database.write_bytes(bytes(data))
        connection = open_database(database, key, writer=True)
        try:
            for table in ("summaries", "alerts", "consents", "audit_log", "outbox"):
                connection.execute(f"SELECT max(id) FROM {table}").fetchone()
            connection.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()
            connection.execute("BEGIN")
            connection.execute(
                "INSERT INTO results (stream, data_class, ts, model_sha256, score, anomaly,"
                " outputs, raw_output) VALUES ('s', 'c', 1e12, 'x', 0, 0, x'', x'')"
            )
            connection.execute("ROLLBACK")
        except Exception:
            continue
        finally:
            connection.close()
        connection = open_database(database, key)
        try:
            connection.execute("SELECT count(*), sum(length(outputs)) FROM results").fetchone()
        except Exception:
            return page
        finally:
            connection.close()
    raise AssertionError("no page holds only results rows; store more results first")

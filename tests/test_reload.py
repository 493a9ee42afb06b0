"""SIGHUP reloads the config and models without dropping queued data, and rejects a bad config."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from conftest import MODELS, Broker, DaemonProcess, Recorder, wait_for
from edgeward import client
from edgeward.security.keys import DATABASE_KEY_INFO, derive_key, load_master_key
from edgeward.store.database import open_database

pytestmark = pytest.mark.integration

HEAD = """device_id: reload-device
database: {{path: {tmp}/edgeward.db, key_file: {tmp}/master.key, create_key: true, batch_interval: 0.05}}
api: {{socket: {tmp}/api.sock}}
mqtt: {{host: 127.0.0.1, port: {port}, batch_max: {batch_max}, reconnect_min: 0.2, reconnect_max: 0.5}}
runtime: {{tflite: tflite-runtime}}
summaries: {{interval: 1s}}
streams:
"""
STREAM = """  - name: {name}
    source: {{type: synthetic, seed: {seed}, channels: 3, rate_hz: 320}}
    window: {{size: 32, hop: 32}}
    model: {{path: {model}, kind: classifier, labels: [normal, anomaly], anomaly_labels: [anomaly]}}
"""


def write(config: Path, port: int, streams: list[str], batch_max: int = 20) -> None:
    text = HEAD.format(tmp=config.parent, port=port, batch_max=batch_max)
    for seed, name in enumerate(streams, start=1):
        text += STREAM.format(name=name, seed=seed, model=MODELS / "demo_anomaly_int8.tflite")
    config.write_text(text)


def test_reload_applies_new_config_and_keeps_queue(
    tmp_path: Path, broker: Broker, recorder: Recorder
) -> None:
    config = tmp_path / "edgeward.yaml"
    write(config, broker.port, ["press"])
    socket_path = tmp_path / "api.sock"
    daemon = DaemonProcess(config)

    def streams() -> dict[str, dict[str, object]]:
        result: dict[str, dict[str, object]] = client.get(socket_path, "/v1/status")["streams"]
        return result

    try:
        daemon.wait_ready(socket_path)
        wait_for(lambda: len(recorder.summaries()) >= 2, 20, "no summary before the reload")

        # With the broker down, summaries queue up; the reload must not lose them.
        broker.stop()
        wait_for(
            lambda: client.get(socket_path, "/v1/status")["store"]["outbox_backlog"] >= 2,
            20,
            "nothing queued while the broker is down",
        )
        windows_before = streams()["press"]["windows"]
        write(config, broker.port, ["press", "drill"], batch_max=5)
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "drill" in streams(), 10, "the reload did not add stream drill")
        # press was unchanged, so it kept running: its counters did not start over.
        assert streams()["press"]["windows"] >= windows_before
        assert "1 streams kept running, 1 started, 0 stopped" in daemon.stderr

        config.write_text(config.read_text() + "unknown_key: 1\n")
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "rejected" in daemon.stderr, 10, "the bad config was not rejected")
        assert "unknown_key" in daemon.stderr
        assert sorted(streams()) == ["drill", "press"]

        write(config, broker.port, ["press", "drill"], batch_max=5)
        config.write_text(config.read_text().replace("edgeward.db", "other.db"))
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(
            lambda: "database cannot change while the daemon runs" in daemon.stderr,
            10,
            "a new database path was not rejected",
        )

        broker.start()
        wait_for(
            lambda: client.get(socket_path, "/v1/status")["store"]["outbox_backlog"] == 0,
            30,
            "the queue did not drain after the reload",
        )
        assert daemon.process.poll() is None
        assert daemon.terminate() == 0
    finally:
        daemon.kill()

    key = derive_key(load_master_key(tmp_path / "master.key"), DATABASE_KEY_INFO)
    connection = open_database(tmp_path / "edgeward.db", key)
    stored = {
        row[0]
        for row in connection.execute(
            "SELECT message_id FROM outbox WHERE kind = 'summary' AND sent_at IS NOT NULL"
        )
    }
    connection.close()
    time.sleep(0.5)
    received = {item["message_id"] for item in recorder.summaries()}
    assert stored <= received

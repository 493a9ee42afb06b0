"""Only data that may leave the device reaches the broker; the rest stays in the local store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import MODELS, Broker, DaemonProcess, Recorder, wait_for
from edgeward import client
from edgeward.security.keys import DATABASE_KEY_INFO, derive_key, load_master_key
from edgeward.store.database import open_database

pytestmark = pytest.mark.integration

STREAM = """  - name: {name}
    source: {{type: synthetic, seed: {seed}, channels: 3, rate_hz: 320, anomaly_rate: 0.05}}
    window: {{size: 32, hop: 32}}
    model:
      path: {model}
      kind: classifier
      labels: [normal, anomaly]
      anomaly_labels: [anomaly]
    summary_class: {summary_class}
    alert_interval: 0.5s
"""

CONFIG = """device_id: egress-device
database: {{path: {tmp}/edgeward.db, key_file: {tmp}/master.key, create_key: true, batch_interval: 0.05}}
api: {{socket: {tmp}/api.sock}}
mqtt: {{host: 127.0.0.1, port: {port}}}
runtime: {{tflite: tflite-runtime}}
summaries: {{interval: 1s}}
data_classes:
  inference: {{tier: internal}}
  summary: {{tier: internal, may_leave_device: true}}
  site-summary: {{tier: confidential, may_leave_device: false}}
streams:
{streams}"""


def test_local_class_never_reaches_broker(
    tmp_path: Path, broker: Broker, recorder: Recorder
) -> None:
    model = MODELS / "demo_anomaly_int8.tflite"
    streams = STREAM.format(
        name="shared", seed=1, model=model, summary_class="summary"
    ) + STREAM.format(name="local", seed=2, model=model, summary_class="site-summary")
    config = tmp_path / "edgeward.yaml"
    config.write_text(CONFIG.format(tmp=tmp_path, port=broker.port, streams=streams))
    socket_path = tmp_path / "api.sock"
    daemon = DaemonProcess(config)
    try:
        daemon.wait_ready(socket_path)
        wait_for(
            lambda: len(recorder.summaries()) >= 4, 20, "no summary of the shared stream arrived"
        )
        wait_for(lambda: recorder.alerts(), 20, "no alert of the shared stream arrived")
        time.sleep(1.0)
        status = client.get(socket_path, "/v1/status")
        assert daemon.terminate() == 0
    finally:
        daemon.kill()

    assert {item["stream"] for item in recorder.summaries()} == {"shared"}
    assert {item["stream"] for item in recorder.alerts()} == {"shared"}
    assert not any("/local" in topic for topic, _ in recorder.messages)
    assert status["mqtt"]["withheld"] > 0

    key = derive_key(load_master_key(tmp_path / "master.key"), DATABASE_KEY_INFO)
    connection = open_database(tmp_path / "edgeward.db", key)
    local_summaries = connection.execute(
        "SELECT count(*) FROM summaries WHERE stream = 'local'"
    ).fetchone()[0]
    local_alerts = connection.execute(
        "SELECT count(*) FROM alerts WHERE stream = 'local'"
    ).fetchone()[0]
    sent = connection.execute(
        "SELECT count(*) FROM outbox WHERE stream = 'local' AND sent_at IS NOT NULL"
    ).fetchone()[0]
    withheld = connection.execute(
        "SELECT count(*) FROM outbox WHERE stream = 'local' AND withheld_at IS NOT NULL"
    ).fetchone()[0]
    connection.close()
    # The local stream's summaries and alerts are stored, marked withheld, and never sent.
    assert local_summaries >= 4
    assert local_alerts >= 1
    assert sent == 0
    assert withheld > 0


def test_disabled_uplink_queues_nothing(tmp_path: Path) -> None:
    streams = STREAM.format(
        name="shared", seed=1, model=MODELS / "demo_anomaly_int8.tflite", summary_class="summary"
    )
    config = tmp_path / "edgeward.yaml"
    text = CONFIG.format(tmp=tmp_path, port=1883, streams=streams)
    config.write_text(text.replace("mqtt: {host: 127.0.0.1, port: 1883}", "mqtt: {enabled: false}"))
    daemon = DaemonProcess(config, "--duration", "4")
    assert daemon.wait(timeout=60) == 0, daemon.stderr

    key = derive_key(load_master_key(tmp_path / "master.key"), DATABASE_KEY_INFO)
    connection = open_database(tmp_path / "edgeward.db", key)
    rows, waiting = connection.execute(
        "SELECT count(*), count(*) FILTER (WHERE withheld_at IS NULL) FROM outbox"
    ).fetchone()
    connection.close()
    # Summaries and alerts are kept, but none waits to be sent, so retention may prune them.
    assert rows >= 2
    assert waiting == 0

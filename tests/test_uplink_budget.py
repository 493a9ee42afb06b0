"""The link budget: bytes per period stay within the cap, and alerts overtake a summary backlog."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from backlog import database_key, fill_outbox
from conftest import MODELS, Broker, DaemonProcess, Recorder, wait_for
from edgeward import client

pytestmark = pytest.mark.integration

DEVICE = "budget-device"
BUDGET = 60_000
PERIOD = 4.0
ALERT_SHARE = 0.2

CONFIG = f"""device_id: {DEVICE}
database: {{{{path: {{tmp}}/data/edgeward.db, key_file: {{tmp}}/master.key, batch_interval: 0.05}}}}
api: {{{{socket: {{tmp}}/api.sock}}}}
mqtt:
  host: 127.0.0.1
  port: {{port}}
  compression: zlib
  summary_expiry: 1d
  alert_expiry: 10m
  budget: {{{{bytes: {BUDGET}, period: {PERIOD}, alert_share: {ALERT_SHARE}}}}}
runtime: {{{{tflite: tflite-runtime}}}}
summaries: {{{{interval: 1s}}}}
streams:
  - name: press
    source: {{{{type: synthetic, seed: 3, channels: 3, rate_hz: 320, anomaly_rate: 0.02}}}}
    window: {{{{size: 32, hop: 32}}}}
    model:
      path: {MODELS / "demo_anomaly_int8.tflite"}
      kind: classifier
      labels: [normal, anomaly]
      anomaly_labels: [anomaly]
    alert_interval: 0.5s
"""


def test_budget_holds_and_alerts_overtake_backlog(
    tmp_path: Path, broker: Broker, recorder: Recorder
) -> None:
    # About 8 MB of summaries: more than the budget lets out during the test.
    fill_outbox(
        tmp_path / "data" / "edgeward.db",
        database_key(tmp_path / "master.key"),
        DEVICE,
        ["press", "drill"],
        per_stream=10_000,
    )
    config = tmp_path / "edgeward.yaml"
    config.write_text(CONFIG.format(tmp=tmp_path, port=broker.port))
    socket_path = tmp_path / "api.sock"
    daemon = DaemonProcess(config)
    try:
        daemon.wait_ready(socket_path)
        run = 4 * PERIOD + 1
        time.sleep(run)
        wait_for(lambda: len(recorder.alerts()) >= 3, 10, "fewer than 3 alerts arrived")
        status = client.get(socket_path, "/v1/status")
        assert daemon.terminate() == 0
    finally:
        daemon.kill()

    # The backlog is still there, so every alert below overtook it.
    assert status["store"]["outbox_backlog"] > 1000
    latencies = [
        at - alert["detected_at"]
        for alert, at in zip(
            recorder.alerts(),
            [at for at, topic, _ in recorder.arrivals if "/alert/" in topic],
            strict=True,
        )
    ]
    assert max(latencies) < 1.0, latencies

    # Counted at the subscriber, which gets each message a little after it
    # left, so a window a little shorter than the period is checked.
    sent = [
        (at, size, "/alert/" in topic)
        for at, topic, size in recorder.arrivals
        if "/status" not in topic
    ]
    window = PERIOD - 0.3
    for start, _, _ in sent:
        inside = [(size, alert) for at, size, alert in sent if start <= at < start + window]
        assert sum(size for size, _ in inside) <= BUDGET
        summaries = sum(size for size, alert in inside if not alert)
        assert summaries <= BUDGET * (1 - ALERT_SHARE)
    total = sum(size for _, size, _ in sent)
    assert total <= BUDGET * (run // PERIOD + 2)
    # The budget was used, not left idle: at least one full summary allowance went out.
    assert total >= BUDGET * (1 - ALERT_SHARE)

    # Batches were compressed and unpack to whole summaries.
    assert any(
        payload[:1] == b"\x78" for topic, payload in recorder.messages if "/summary/" in topic
    )
    assert all(item["type"] == "summary" for item in recorder.summaries())
    assert status["mqtt"]["budget"]["bytes"] == BUDGET

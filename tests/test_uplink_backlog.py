"""Memory stays bounded while a backlog of one million summaries drains to a real broker."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from backlog import database_key, fill_outbox
from conftest import MODELS, Broker, DaemonProcess, unpack
from edgeward import client

pytestmark = pytest.mark.integration

DEVICE = "backlog-device"
STREAMS = ["line-a", "line-b"]
BACKLOG = 1_000_000
MAX_RSS_RATIO = 1.5

CONFIG = """device_id: {device}
database: {{path: {tmp}/data/edgeward.db, key_file: {tmp}/master.key}}
api: {{socket: {tmp}/api.sock}}
mqtt: {{host: 127.0.0.1, port: {port}}}
runtime: {{tflite: tflite-runtime}}
summaries: {{interval: 10s}}
streams:
  - name: line-a
    source: {{type: synthetic, seed: 1, channels: 3, rate_hz: 100}}
    window: {{size: 32, hop: 16}}
    model:
      path: {model}
      kind: classifier
      labels: [normal, anomaly]
      anomaly_labels: [anomaly]
"""


class IdCounter:
    """A QoS 1 subscriber that keeps only the message ids of the summaries it gets."""

    def __init__(self, port: int) -> None:
        self.ids: set[str] = set()
        self.received = 0
        self._lock = threading.Lock()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"counter-{port}", clean_session=False
        )
        self._client.on_message = self._on_message
        self._client.on_connect = lambda c, u, f, rc, p: c.subscribe(
            f"edgeward/v1/{DEVICE}/summary/#", qos=1
        )
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        items = unpack(bytes(message.payload))
        with self._lock:
            self.received += len(items)
            self.ids.update(item["message_id"] for item in items)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM line in /proc/{pid}/status")


def run_until_drained(
    folder: Path, broker: Broker, min_seconds: float, timeout: float
) -> tuple[int, float]:
    """Run the daemon until its outbox is empty and `min_seconds` have passed.

    Returns the peak RSS in KiB and the seconds it took to empty the outbox.
    """
    config = folder / "edgeward.yaml"
    config.write_text(
        CONFIG.format(
            device=DEVICE, tmp=folder, port=broker.port, model=MODELS / "demo_anomaly_int8.tflite"
        )
    )
    socket_path = folder / "api.sock"
    daemon = DaemonProcess(config)
    try:
        daemon.wait_ready(socket_path)
        started = time.monotonic()
        drained_after = None
        while True:
            elapsed = time.monotonic() - started
            store = client.get(socket_path, "/v1/status")["store"]
            if store["outbox_backlog"] == 0 and drained_after is None:
                drained_after = elapsed
            if drained_after is not None and elapsed >= min_seconds:
                break
            assert elapsed < timeout, f"{store['outbox_backlog']} summaries still unsent"
            time.sleep(0.5)
        peak = peak_rss_kib(daemon.process.pid)
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
    return peak, drained_after


def test_million_summary_backlog_drains_in_bounded_memory(
    tmp_path: Path, broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    database_key(empty / "master.key")
    baseline, _ = run_until_drained(empty, broker, min_seconds=15, timeout=60)

    full = tmp_path / "full"
    fill_outbox(
        full / "data" / "edgeward.db",
        database_key(full / "master.key"),
        DEVICE,
        STREAMS,
        per_stream=BACKLOG // len(STREAMS),
    )
    counter = IdCounter(broker.port)
    try:
        peak, seconds = run_until_drained(full, broker, min_seconds=15, timeout=600)
        deadline = time.monotonic() + 60
        while len(counter.ids) < BACKLOG and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        counter.close()

    ratio = peak / baseline
    with capsys.disabled():
        print(
            f"\n1M backlog: drained in {seconds:.0f} s ({BACKLOG / seconds:.0f} summaries/s); "
            f"peak RSS {peak / 1024:.1f} MiB against {baseline / 1024:.1f} MiB with an empty "
            f"outbox ({ratio:.2f}x); {counter.received - len(counter.ids)} duplicates",
            flush=True,
        )
    assert len(counter.ids) >= BACKLOG
    assert ratio <= MAX_RSS_RATIO

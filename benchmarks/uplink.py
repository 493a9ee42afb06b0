"""Uplink benchmarks: alert latency, and backlog drain rate against bare paho QoS 1.

Run: .venv/bin/python benchmarks/uplink.py [--backlog N] [--alerts N] [--json PATH]

Both parts start their own mosquitto on a free loopback port.

1. Alert latency: the daemon runs a synthetic stream with frequent anomalies
   and one alert per anomalous window, beside a summary backlog that keeps
   the uplink busy. A subscriber takes time.time() when each alert arrives
   and subtracts the alert's detected_at, which the stream set after the
   model's invoke. The raw limit is bare paho: a QoS 1 publish of the same
   alert payload with TCP_NODELAY set, timed from publish() to arrival at
   the same subscriber.
2. Drain rate: the outbox is filled with N summaries before the daemon
   starts. The rate is N over the time from the first to the last PUBACK,
   read from the daemon's status every 0.1 s. The raw limit is one paho
   client that publishes the same payloads, one per message, to the same
   broker with QoS 1 and at most the daemon's max_inflight unacknowledged,
   timed from the first publish() to the last PUBACK. No client subscribes during this part, so
   the broker's delivery costs are the same for both. The daemon runs
   twice: with batch_max 1 (one summary per message, as the bare client)
   and with the default batch_max of 20.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tools"))

from receiver import unpack  # noqa: E402

from backlog import database_key, fill_outbox  # noqa: E402
from conftest import Broker  # noqa: E402
from edgeward import client  # noqa: E402
from edgeward.agent.payloads import alert_payload, new_message_id  # noqa: E402

DEVICE = "bench-device"
MAX_INFLIGHT = 20
MODEL = REPO / "models" / "demo_anomaly_int8.tflite"

CONFIG = """device_id: {device}
database: {{path: {folder}/data/edgeward.db, key_file: {folder}/master.key}}
api: {{socket: {folder}/api.sock}}
mqtt: {{host: 127.0.0.1, port: {port}, max_inflight: {inflight}, batch_max: {batch_max}}}
runtime: {{tflite: tflite-runtime}}
summaries: {{interval: 60s}}
streams:
{streams}"""

ALERT_STREAM = """  - name: press
    source: {{type: synthetic, seed: 5, channels: 3, rate_hz: 100, anomaly_rate: 0.05}}
    window: {{size: 32, hop: 16}}
    model: {{path: {model}, kind: classifier, labels: [normal, anomaly], anomaly_labels: [anomaly]}}
    alert_interval: 0s
"""

IDLE_STREAM = """  - name: press
    source: {{type: synthetic, seed: 5, channels: 3, rate_hz: 1, samples: 1}}
    window: {{size: 32, hop: 16}}
    model: {{path: {model}, kind: classifier, labels: [normal, anomaly], anomaly_labels: [anomaly]}}
"""


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def start_daemon(folder: Path, port: int, streams: str, batch_max: int) -> subprocess.Popen[bytes]:
    config = folder / "edgeward.yaml"
    config.write_text(
        CONFIG.format(
            device=DEVICE,
            folder=folder,
            port=port,
            inflight=MAX_INFLIGHT,
            batch_max=batch_max,
            streams=streams.format(model=MODEL),
        )
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "edgeward.cli", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=(folder / "daemon.log").open("wb"),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            client.get(folder / "api.sock", "/v1/status")
            return process
        except Exception:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"the daemon did not start; see {folder / 'daemon.log'}")


def stop_daemon(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)


class LatencySubscriber:
    """Record arrival time.time() and payload of each message on a topic filter."""

    def __init__(self, port: int, topic: str) -> None:
        self.arrivals: list[tuple[float, bytes]] = []
        self._lock = threading.Lock()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"latency-{port}")
        self._client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        time.sleep(0.3)
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        now = time.time()
        with self._lock:
            self.arrivals.append((now, bytes(message.payload)))

    def count(self) -> int:
        with self._lock:
            return len(self.arrivals)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def connected_client(port: int, client_id: str) -> mqtt.Client:
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    publisher.max_inflight_messages_set(MAX_INFLIGHT)
    connected = threading.Event()
    publisher.on_connect = lambda c, u, f, rc, p: connected.set()
    publisher.connect("127.0.0.1", port)
    publisher.loop_start()
    if not connected.wait(10):
        raise RuntimeError("the bare paho client did not connect")
    sock = publisher.socket()
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return publisher


def alert_latency(base: Path, broker: Broker, alerts: int) -> dict[str, float]:
    folder = base / "alerts"
    folder.mkdir()
    # A backlog keeps the uplink busy, so the alerts have to overtake it.
    fill_outbox(
        folder / "data" / "edgeward.db",
        database_key(folder / "master.key"),
        DEVICE,
        ["drill"],
        per_stream=50_000,
    )
    subscriber = LatencySubscriber(broker.port, f"edgeward/v1/{DEVICE}/alert/#")
    daemon = start_daemon(folder, broker.port, ALERT_STREAM, batch_max=20)
    try:
        deadline = time.monotonic() + 600
        while subscriber.count() < alerts and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop_daemon(daemon)
        subscriber.close()
    latencies = []
    for arrived, payload in subscriber.arrivals:
        for item in unpack(payload):
            latencies.append(arrived - item["detected_at"])

    bare_subscriber = LatencySubscriber(broker.port, "bench/alert")
    publisher = connected_client(broker.port, "bare-alert")
    sent_at = []
    try:
        for seq in range(1, alerts + 1):
            payload = alert_payload(
                DEVICE,
                "press",
                "summary",
                seq,
                new_message_id(),
                0.0,
                "anomaly",
                0.9,
                "0" * 64,
                0.0,
            )
            sent_at.append(time.time())
            publisher.publish("bench/alert", payload, qos=1)
            time.sleep(0.02)
        deadline = time.monotonic() + 30
        while bare_subscriber.count() < alerts and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        bare_subscriber.close()
    bare = [
        arrived - sent
        for (arrived, _), sent in zip(bare_subscriber.arrivals, sent_at, strict=False)
    ]

    return {
        "alerts": len(latencies),
        "alert_p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
        "alert_p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "bare_publish_p50_ms": round(percentile(bare, 0.5) * 1000, 2),
        "bare_publish_p99_ms": round(percentile(bare, 0.99) * 1000, 2),
    }


def daemon_drain_rate(base: Path, broker: Broker, backlog: int, batch_max: int) -> float:
    folder = base / f"drain-{batch_max}"
    folder.mkdir()
    fill_outbox(
        folder / "data" / "edgeward.db",
        database_key(folder / "master.key"),
        DEVICE,
        ["line-a", "line-b"],
        per_stream=backlog // 2,
    )
    daemon = start_daemon(folder, broker.port, IDLE_STREAM, batch_max=batch_max)
    first = last = None
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            acknowledged = client.get(folder / "api.sock", "/v1/status")["mqtt"]["acknowledged"]
            now = time.monotonic()
            if first is None and acknowledged > 0:
                first = now
            if acknowledged >= backlog:
                last = now
                break
            time.sleep(0.1)
    finally:
        stop_daemon(daemon)
    if first is None or last is None:
        raise RuntimeError(f"the daemon did not drain {backlog} summaries; see {folder}/daemon.log")
    return backlog / (last - first)


def bare_drain_rate(base: Path, broker: Broker, backlog: int) -> float:
    """Publish the same stored payloads with one paho client, QoS 1; return messages per second."""
    folder = base / "drain-20"
    from edgeward.store.database import open_database

    connection = open_database(folder / "data" / "edgeward.db", database_key(folder / "master.key"))
    rows = connection.execute(
        "SELECT topic, payload FROM outbox WHERE kind = 'summary' ORDER BY id LIMIT ?", (backlog,)
    ).fetchall()
    connection.close()

    publisher = connected_client(broker.port, "bare-drain")
    # At most MAX_INFLIGHT messages are handed to paho at a time, as the
    # daemon does: paho scans its whole message queue on every PUBACK, so
    # queueing all of them at once would make the bare loop quadratic.
    slots = threading.Semaphore(MAX_INFLIGHT)
    publisher.on_publish = lambda c, u, mid, rc, p: slots.release()
    started = time.monotonic()
    try:
        for topic, payload in rows:
            slots.acquire()
            publisher.publish(topic.replace(DEVICE, "bare-device"), payload, qos=1)
        for _ in range(MAX_INFLIGHT):
            slots.acquire()
        elapsed = time.monotonic() - started
    finally:
        publisher.loop_stop()
        publisher.disconnect()
    return len(rows) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=200_000, help="summaries to drain")
    parser.add_argument("--alerts", type=int, default=300, help="alerts to time")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="edgeward-uplink-bench-") as folder:
        base = Path(folder)
        (base / "broker").mkdir()
        broker = Broker(base / "broker")
        broker.start()
        try:
            latency = alert_latency(base, broker, arguments.alerts)
            single = daemon_drain_rate(base, broker, arguments.backlog, 1)
            batched = daemon_drain_rate(base, broker, arguments.backlog, 20)
            bare = [bare_drain_rate(base, broker, arguments.backlog) for _ in range(3)]
        finally:
            broker.stop()

    bare_rate = statistics.median(bare)
    figures = {
        **latency,
        "alert_p50_vs_bare": round(latency["alert_p50_ms"] / latency["bare_publish_p50_ms"], 1),
        "backlog": arguments.backlog,
        "bare_paho_messages_per_second": round(bare_rate),
        "daemon_batch_max_1_summaries_per_second": round(single),
        "daemon_batch_max_1_ratio": round(single / bare_rate, 3),
        "daemon_batch_max_20_summaries_per_second": round(batched),
        "daemon_batch_max_20_ratio": round(batched / bare_rate, 3),
        "max_inflight": MAX_INFLIGHT,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    text = json.dumps(figures, indent=2)
    print(text)
    if arguments.json:
        arguments.json.write_text(text + "\n")


if __name__ == "__main__":
    main()

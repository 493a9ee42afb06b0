"""The uplink's parts: reconnect backoff, the byte budget, and a refused CONNACK from a real broker."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import MODELS, Broker, DaemonProcess, wait_for
from edgeward import client
from edgeward.agent.budget import ByteBudget
from edgeward.agent.mqtt_link import backoff_delay


def test_backoff_grows_to_cap_with_jitter() -> None:
    for attempt, ceiling in [(0, 1.0), (1, 2.0), (3, 8.0), (6, 60.0), (40, 60.0)]:
        delays = [backoff_delay(attempt, 1.0, 60.0) for _ in range(200)]
        assert min(delays) >= ceiling / 2
        assert max(delays) <= ceiling
        # Jitter: the delays spread over the range instead of repeating one value.
        assert max(delays) - min(delays) > ceiling / 4


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_budget_window_slides() -> None:
    clock = Clock()
    budget = ByteBudget(1000, 10.0, 0.2, clock)
    assert budget.wait(700, alert=False) == 0.0
    budget.spend(700)
    clock.now = 4.0
    # Summaries may use 800 bytes; 700 + 200 is over, until the 700 leave the window at t=10.
    assert budget.wait(200, alert=False) == pytest.approx(6.0)
    # Alerts may use the whole 1000.
    assert budget.wait(200, alert=True) == 0.0
    budget.spend(200)
    clock.now = 10.0
    assert budget.used == 200
    assert budget.wait(600, alert=False) == 0.0


def test_budget_lets_oversized_message_out_alone() -> None:
    clock = Clock()
    budget = ByteBudget(1000, 10.0, 0.0, clock)
    budget.spend(10)
    assert budget.wait(5000, alert=False) == pytest.approx(10.0)
    clock.now = 10.0
    assert budget.wait(5000, alert=False) == 0.0


def test_budget_seeded_from_earlier_run() -> None:
    clock = Clock()
    clock.now = 100.0
    budget = ByteBudget(1000, 10.0, 0.0, clock)
    budget.seed([(2.0, 900), (30.0, 900)])
    assert budget.used == 900
    assert budget.wait(200, alert=False) == pytest.approx(8.0)


@pytest.mark.integration
def test_refused_connack_is_reported(tmp_path: Path) -> None:
    workdir = tmp_path / "broker"
    workdir.mkdir()
    broker = Broker(workdir)
    passwords = workdir / "passwords"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwords), "device-17", "right-password"], check=True
    )
    broker.config.write_text(
        broker.config.read_text().replace("allow_anonymous true", "allow_anonymous false")
        + f"password_file {passwords}\n"
    )
    broker.start()
    (tmp_path / "mqtt.password").write_text("wrong-password\n")
    config = tmp_path / "edgeward.yaml"
    config.write_text(
        f"""device_id: refused-device
database: {{path: {tmp_path}/edgeward.db, key_file: {tmp_path}/master.key, create_key: true}}
api: {{socket: {tmp_path}/api.sock}}
mqtt: {{host: 127.0.0.1, port: {broker.port}, username: device-17,
        password_file: {tmp_path}/mqtt.password, reconnect_min: 0.2, reconnect_max: 0.5}}
runtime: {{tflite: tflite-runtime}}
streams:
  - name: press
    source: {{type: synthetic, channels: 3, rate_hz: 50}}
    window: {{size: 32, hop: 16}}
    model: {{path: {MODELS / "demo_anomaly_int8.tflite"}, kind: classifier, labels: [normal, anomaly]}}
"""
    )
    socket_path = tmp_path / "api.sock"
    daemon = DaemonProcess(config)
    try:
        daemon.wait_ready(socket_path)

        def refused() -> bool:
            mqtt = client.get(socket_path, "/v1/status")["mqtt"]
            return str(mqtt.get("last_error", "")).startswith("connection refused")

        wait_for(refused, 10, "the refused CONNACK was not reported")
        mqtt = client.get(socket_path, "/v1/status")["mqtt"]
        assert mqtt["connected"] is False
        assert mqtt["connects"] == 0
        assert "Not authorized" in mqtt["last_error"] or "password" in mqtt["last_error"]
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        broker.stop()
    # Logged once, not once per attempt.
    assert daemon.stderr.count("refused the connection") == 1

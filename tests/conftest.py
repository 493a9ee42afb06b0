"""Shared fixtures: a real mosquitto on a free loopback port, a recording subscriber, a daemon subprocess."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgeward import client
from edgeward.errors import ApiError
from edgeward.security.keys import DATABASE_KEY_INFO, derive_key, load_master_key
from edgeward.store.database import open_database

REPO = Path(__file__).resolve().parent.parent
REALDATA = REPO.parent / "shared" / "realdata"
MODELS = REPO / "models"
sys.path.insert(0, str(REPO / "tools"))

from receiver import unpack  # noqa: E402


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(found).exists():
        pytest.fail(
            "mosquitto is not installed; run 'make test' as root or 'apt-get install mosquitto'"
        )
    return found


class Broker:
    """A mosquitto process on 127.0.0.1:port that keeps sessions and queued messages across restarts."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.config = workdir / "mosquitto.conf"
        # Started as root, mosquitto switches to user mosquitto, which cannot
        # save its persistence file in a test's folder under /tmp/pytest-of-root.
        user = "user root\n" if os.geteuid() == 0 else ""
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {workdir}/\n"
            "set_tcp_nodelay true\n"
            "max_queued_messages 1000000\n"
            f"{user}"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.workdir / "mosquitto.log").open("ab")
        self.process = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.config)], stdout=log, stderr=log
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within 10 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


class Recorder:
    """A QoS 1 subscriber with a persistent session that records every message it gets."""

    def __init__(self, port: int, topic: str = "edgeward/#") -> None:
        self.messages: list[tuple[str, bytes]] = []
        # (time.time() at arrival, topic, payload and topic bytes) of every message.
        self.arrivals: list[tuple[float, str, int]] = []
        # (topic, summary or alert) for every item received, batches unpacked, duplicates kept.
        self._items: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"recorder-{port}", clean_session=False
        )
        self._client.on_message = self._on_message
        self._client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self._client.reconnect_delay_set(0.2, 1)
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        payload = bytes(message.payload)
        items = [] if "/status" in message.topic else unpack(payload)
        with self._lock:
            self.arrivals.append((time.time(), message.topic, len(payload) + len(message.topic)))
            self.messages.append((message.topic, payload))
            self._items += [(message.topic, item) for item in items]

    def summaries(self) -> list[dict[str, Any]]:
        """Every summary received, in order, batches unpacked, duplicates kept."""
        with self._lock:
            return [item for topic, item in self._items if "/summary/" in topic]

    def alerts(self) -> list[dict[str, Any]]:
        with self._lock:
            return [item for topic, item in self._items if "/alert/" in topic]

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    workdir = tmp_path / "broker"
    workdir.mkdir()
    instance = Broker(workdir)
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture
def recorder(broker: Broker) -> Iterator[Recorder]:
    instance = Recorder(broker.port)
    time.sleep(0.3)
    yield instance
    instance.close()


class DaemonProcess:
    """`edgeward run` in a subprocess, with its stderr kept in a file."""

    def __init__(self, config: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.stderr_path = config.with_suffix(".stderr")
        self._stderr = self.stderr_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edgeward.cli", "run", "--config", str(config), *args],
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_ready(self, socket_path: Path, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"daemon exited with {self.process.returncode}:\n{self.stderr}"
                )
            try:
                status: dict[str, Any] = client.get(socket_path, "/v1/status", timeout=2)
                return status
            except ApiError:
                time.sleep(0.1)
        raise AssertionError(f"daemon API not up within {timeout} s:\n{self.stderr}")

    def terminate(self, timeout: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self._stderr.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def wait_for(predicate: Any, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(message)


def run_daemon(
    tmp_path: Path,
    streams: str,
    runtime: str = "auto",
    columns: str = "stream, ts, label, score, anomaly",
) -> list[dict[str, Any]]:
    """Run the daemon over replay streams until they end; return every result row."""
    config = tmp_path / "edgeward.yaml"
    config.write_text(
        f"""device_id: realdata
database: {{path: {tmp_path}/edgeward.db, key_file: {tmp_path}/master.key, create_key: true}}
api: {{socket: {tmp_path}/api.sock}}
mqtt: {{enabled: false}}
runtime: {{tflite: {runtime}}}
summaries: {{interval: 1h}}
streams:
{streams}"""
    )
    daemon = DaemonProcess(config, "--until-done")
    assert daemon.wait(timeout=300) == 0, daemon.stderr

    key = derive_key(load_master_key(tmp_path / "master.key"), DATABASE_KEY_INFO)
    connection = open_database(tmp_path / "edgeward.db", key)
    cursor = connection.execute(f"SELECT {columns} FROM results ORDER BY stream, ts")
    names = [description[0] for description in cursor.description]
    rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    connection.close()
    return rows


def direct_interpreter(runtime: str, model: Path) -> Any:
    if runtime == "litert":
        from ai_edge_litert.interpreter import Interpreter
    else:
        from tflite_runtime.interpreter import Interpreter
    interpreter = Interpreter(model_path=str(model))
    interpreter.allocate_tensors()
    return interpreter

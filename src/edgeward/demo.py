"""`edgeward demo`: run the daemon on the embedded default for a short while and report.

When a `mosquitto` binary is installed, the demo starts one on a free
loopback port and counts the summaries that reach it; otherwise the
summaries stay in the outbox, as they would with the broker down.
"""

from __future__ import annotations

import logging
import shutil
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any

from edgeward import client
from edgeward.agent import systemd
from edgeward.agent.daemon import Daemon, RunOptions
from edgeward.cli import format_results
from edgeward.config import load_config_text
from edgeward.errors import ApiError

log = logging.getLogger(__name__)

# Unix socket paths are limited to 107 bytes on Linux.
MAX_SOCKET_PATH = 100


def run_demo(state_dir: Path, duration: float) -> int:
    systemd.setup_logging(logging.WARNING)
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    model = Path(str(resources.files("edgeward") / "data" / "demo_anomaly_int8.tflite"))
    socket_path = state_dir / "api.sock"
    if len(str(socket_path)) > MAX_SOCKET_PATH:
        socket_path = Path(tempfile.mkdtemp(prefix="edgeward-")) / "api.sock"

    broker = _Broker.start_if_installed(state_dir)
    try:
        daemon, sample = _run_daemon(state_dir, socket_path, model, broker, duration)
    finally:
        delivered = broker.stop() if broker else 0
    _report(daemon, daemon.config.source_file or state_dir, sample, delivered, broker is not None)
    return 0


def _run_daemon(
    state_dir: Path, socket_path: Path, model: Path, broker: _Broker | None, duration: float
) -> tuple[Daemon, dict[str, Any]]:
    text = (resources.files("edgeward") / "data" / "demo.yaml").read_text()
    text = string.Template(text).substitute(
        state_dir=state_dir,
        socket=socket_path,
        model=model,
        mqtt_enabled="true" if broker else "false",
        mqtt_port=broker.port if broker else 1883,
    )
    config_file = state_dir / "edgeward.yaml"
    config_file.write_text(text)
    config = load_config_text(text, str(config_file), state_dir)
    config.source_file = config_file

    print(
        f"edgeward demo: running the embedded default for {duration:.0f} s "
        f"({len(config.streams)} synthetic streams, model {model.name})"
    )
    if broker:
        print(f"edgeward demo: started mosquitto on 127.0.0.1:{broker.port} for the uplink")
    else:
        print("edgeward demo: mosquitto is not installed, so summaries stay in the outbox")

    daemon = Daemon(config, RunOptions(duration=duration))
    sample: dict[str, Any] = {}
    probe = threading.Thread(
        target=_query_near_end, args=(socket_path, duration, sample), daemon=True
    )
    probe.start()
    daemon.run()
    probe.join(timeout=1)
    return daemon, sample


def _query_near_end(socket_path: Path, duration: float, sample: dict[str, Any]) -> None:
    time.sleep(max(1.0, duration - 3.0))
    try:
        sample["results"] = client.get(socket_path, "/v1/results", {"limit": 5})["results"]
        sample["status"] = client.get(socket_path, "/v1/status")
    except ApiError as error:
        sample["error"] = str(error)


def _report(
    daemon: Daemon, config_file: Path, sample: dict[str, Any], delivered: int, had_broker: bool
) -> None:
    writer = daemon.writer
    windows = sum(w.filter.counters.windows for w in daemon.workers)
    anomalies = sum(w.filter.counters.anomalies for w in daemon.workers)
    print()
    print(f"windows processed:  {windows} ({anomalies} flagged as anomalies)")
    print(f"results committed:  {writer.counters.results if writer else 0}")
    print(f"summaries written:  {writer.counters.summaries if writer else 0}")
    if had_broker:
        print(f"summaries received by the broker's subscriber: {delivered}")
    print(
        f"encrypted database: {daemon.config.database.path} (SQLCipher, AES-256; key in "
        f"{daemon.config.database.key_file})"
    )
    if "results" in sample:
        print("\nlatest results, read through the local API a few seconds before the end:")
        print(format_results(sample["results"]))
    elif "error" in sample:
        print(f"\nthe API query during the run failed: {sample['error']}")
    command = _command_name()
    print("\nto run it again and query it from another terminal:")
    print(f"  {command} run --config {config_file}")
    print(f"  {command} query results --config {config_file} --since 10m")
    print(f"  curl --unix-socket {daemon.config.api.socket} http://localhost/v1/status")


def _command_name() -> str:
    """Return how to call edgeward from a shell: its name when on PATH, else its full path."""
    if shutil.which("edgeward"):
        return "edgeward"
    script = Path(sys.executable).parent / "edgeward"
    return str(script) if script.exists() else "edgeward"


class _Broker:
    """A throwaway mosquitto on a free loopback port, with a subscriber that counts summaries."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, workdir: Path) -> None:
        self.process = process
        self.port = port
        self.workdir = workdir
        self.received = 0
        self._subscriber: Any = None

    @classmethod
    def start_if_installed(cls, state_dir: Path) -> _Broker | None:
        binary = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
        )
        if binary is None:
            return None
        port = free_port()
        workdir = Path(tempfile.mkdtemp(prefix="edgeward-demo-broker-"))
        conf = workdir / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
        process = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        broker = cls(process, port, workdir)
        if not broker._subscribe():
            broker.stop()
            return None
        return broker

    def _subscribe(self) -> bool:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        subscriber = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="edgeward-demo-subscriber")

        def on_message(client: Any, userdata: Any, message: Any) -> None:
            if "/summary/" in message.topic:
                self.received += 1

        subscriber.on_message = on_message
        for _ in range(50):
            try:
                subscriber.connect("127.0.0.1", self.port)
                break
            except OSError:
                time.sleep(0.1)
        else:
            return False
        subscriber.subscribe("edgeward/#", qos=1)
        subscriber.loop_start()
        self._subscriber = subscriber
        return True

    def stop(self) -> int:
        time.sleep(0.5)
        if self._subscriber is not None:
            self._subscriber.loop_stop()
            self._subscriber.disconnect()
        self.process.terminate()
        self.process.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)
        return self.received


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port

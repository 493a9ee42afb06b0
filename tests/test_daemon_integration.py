"""The daemon end to end: a subprocess with a real mosquitto, SQLCipher file and TFLite runtime."""

from __future__ import annotations

import math
import re
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from tflite_runtime.interpreter import Interpreter

from conftest import (
    MODELS,
    REALDATA,
    Broker,
    DaemonProcess,
    Recorder,
    direct_interpreter,
    run_daemon,
    wait_for,
)
from edgeward import client
from edgeward.agent.runtime import installed_runtimes
from edgeward.agent.synthetic import SyntheticSignal
from edgeward.errors import WrongKeyError
from edgeward.security.keys import DATABASE_KEY_INFO, derive_key, load_master_key
from edgeward.store.database import open_database

pytestmark = pytest.mark.integration

HELLO_WORLD = REALDATA / "models" / "hello_world_int8.tflite"
STREAM = "sinemarkerquokka"
LABELS_FILE_MARKER = "regressionmarkerwombat"
ROWS = 3000


def write_sine_csv(path: Path, rows: int) -> dict[float, float]:
    """Write a replay file with one x value per second; return x by timestamp."""
    xs = {}
    lines = ["t,x"]
    for i in range(rows):
        t = 1_700_000_000.0 + i
        x = (i % 100) / 100 * 2 * math.pi
        xs[t] = x
        lines.append(f"{t:.0f},{x!r}")
    path.write_text("\n".join(lines) + "\n")
    return xs


def write_config(tmp_path: Path, port: int, csv: Path, speed: float) -> Path:
    config = tmp_path / "edgeward.yaml"
    config.write_text(
        f"""
device_id: it-device
database: {{path: {tmp_path}/data/edgeward.db, key_file: {tmp_path}/master.key, create_key: true,
           batch_interval: 0.05}}
api: {{socket: {tmp_path}/api.sock}}
mqtt: {{host: 127.0.0.1, port: {port}, reconnect_min: 1, reconnect_max: 2}}
runtime: {{tflite: tflite-runtime}}
summaries: {{interval: 10s}}
streams:
  - name: {STREAM}
    source: {{type: csv, path: {csv}, columns: [x], time_column: t, playback: realtime, speed: {speed}}}
    window: {{size: 1, hop: 1}}
    model: {{path: {HELLO_WORLD}, kind: regression, threshold: 0.9}}
"""
    )
    return config


def read_key(tmp_path: Path) -> bytes:
    return derive_key(load_master_key(tmp_path / "master.key"), DATABASE_KEY_INFO)


def direct_outputs(xs: list[float]) -> list[bytes]:
    """Run each x through a plain tflite_runtime interpreter, quantizing as the model says."""
    interpreter = Interpreter(model_path=str(HELLO_WORLD))
    interpreter.allocate_tensors()
    tensor_in = interpreter.get_input_details()[0]
    tensor_out = interpreter.get_output_details()[0]
    scale, zero_point = tensor_in["quantization"]
    outputs = []
    for x in xs:
        q = np.clip(np.rint(x / scale) + zero_point, -128, 127).astype(np.int8).reshape(1, 1)
        interpreter.set_tensor(tensor_in["index"], q)
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(tensor_out["index"]).tobytes())
    return outputs


def database_files(tmp_path: Path) -> dict[str, bytes]:
    base = tmp_path / "data" / "edgeward.db"
    files = {}
    for suffix in ("", "-wal", "-shm"):
        path = Path(str(base) + suffix)
        if path.exists():
            files[path.name] = path.read_bytes()
    return files


def assert_no_plaintext(files: dict[str, bytes], markers: list[str]) -> None:
    for name, data in files.items():
        for marker in markers:
            assert marker.encode() not in data, f"{marker!r} is readable in {name}"


def test_daemon_end_to_end_with_broker_outage(
    tmp_path: Path, broker: Broker, recorder: Recorder
) -> None:
    xs = write_sine_csv(tmp_path / "sine.csv", ROWS)
    config = write_config(tmp_path, broker.port, tmp_path / "sine.csv", speed=150.0)
    socket_path = tmp_path / "api.sock"
    daemon = DaemonProcess(config)
    try:
        daemon.wait_ready(socket_path)
        wait_for(lambda: len(recorder.summaries()) >= 3, 20, "no summary reached the broker")

        broker.stop()
        time.sleep(3)
        during_outage = client.get(socket_path, "/v1/status")
        assert during_outage["mqtt"]["connected"] is False
        files_while_running = database_files(tmp_path)
        broker.start()

        def drained() -> bool:
            status = client.get(socket_path, "/v1/status")
            stream = status["streams"][STREAM]
            return bool(stream["finished"]) and status["store"]["outbox_backlog"] == 0

        wait_for(drained, 60, "the outbox did not drain after the broker came back")
        assert daemon.terminate() == 0
    finally:
        daemon.kill()

    key = read_key(tmp_path)
    connection = open_database(tmp_path / "data" / "edgeward.db", key)
    results = connection.execute(
        "SELECT ts, raw_output, stream, model_sha256 FROM results ORDER BY ts"
    ).fetchall()
    summaries = connection.execute(
        "SELECT s.seq, o.message_id FROM summaries s JOIN outbox o ON o.summary_id = s.id ORDER BY s.seq"
    ).fetchall()
    connection.close()

    assert len(results) == ROWS
    expected = direct_outputs([xs[ts] for ts, _, _, _ in results])
    assert [raw for _, raw, _, _ in results] == expected
    assert {sha for _, _, _, sha in results} == {
        "505ee4fae7fa46ab67bea4c08b4969eb3eb8b9114c50595ec4a29d9a27993202"
    }

    time.sleep(0.5)
    received = recorder.summaries()
    unique = {message["message_id"]: message for message in received}
    assert sorted(m["seq"] for m in unique.values()) == [seq for seq, _ in summaries]
    assert set(unique) == {message_id for _, message_id in summaries}
    assert during_outage["store"]["outbox_backlog"] > 0

    markers = [STREAM, "it-device", "summary/"]
    assert_no_plaintext(files_while_running, markers)
    assert_no_plaintext(database_files(tmp_path), markers)


def test_sigterm_commits_every_result(tmp_path: Path, broker: Broker) -> None:
    write_sine_csv(tmp_path / "sine.csv", 100_000)
    config = write_config(tmp_path, broker.port, tmp_path / "sine.csv", speed=2000.0)
    daemon = DaemonProcess(config)
    try:
        daemon.wait_ready(tmp_path / "api.sock")
        time.sleep(3)
        assert daemon.terminate() == 0
    finally:
        daemon.kill()

    match = re.search(rf"stream {STREAM} stopped after (\d+) windows", daemon.stderr)
    assert match, daemon.stderr
    produced = int(match.group(1))
    assert 0 < produced < 100_000

    connection = open_database(tmp_path / "data" / "edgeward.db", read_key(tmp_path))
    committed = connection.execute("SELECT count(*) FROM results").fetchone()[0]
    connection.close()
    assert committed == produced


def test_wrong_key_leaves_database_unchanged(tmp_path: Path, broker: Broker) -> None:
    write_sine_csv(tmp_path / "sine.csv", 50)
    config = write_config(tmp_path, broker.port, tmp_path / "sine.csv", speed=1000.0)
    daemon = DaemonProcess(config, "--until-done")
    assert daemon.wait() == 0, daemon.stderr

    before = database_files(tmp_path)
    with pytest.raises(WrongKeyError):
        open_database(tmp_path / "data" / "edgeward.db", bytes(32), writer=True)
    assert database_files(tmp_path) == before

    (tmp_path / "master.key").write_text("11" * 32 + "\n")
    rerun = DaemonProcess(config, "--until-done")
    assert rerun.wait() == 1
    assert "could not be decrypted" in rerun.stderr
    assert database_files(tmp_path) == before


def test_daemon_notifies_systemd(tmp_path: Path, broker: Broker) -> None:
    write_sine_csv(tmp_path / "sine.csv", 20)
    config = write_config(tmp_path, broker.port, tmp_path / "sine.csv", speed=10.0)
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(30)
        daemon = DaemonProcess(config, "--until-done", env={"NOTIFY_SOCKET": str(notify_path)})
        try:
            messages = [notify.recv(4096).decode()]
            assert daemon.wait() == 0, daemon.stderr
            messages.append(notify.recv(4096).decode())
        finally:
            daemon.kill()
    assert messages == ["READY=1", "STOPPING=1"]


@pytest.mark.parametrize("runtime", installed_runtimes())
def test_windowed_results_match_direct_interpreter(tmp_path: Path, runtime: str) -> None:
    model = MODELS / "demo_anomaly_int8.tflite"
    values, _ = SyntheticSignal(seed=5).read(1000)
    values[100, 1] = np.nan
    lines = ["t,a,b,c", *(f"{i},{v[0]!r},{v[1]!r},{v[2]!r}" for i, v in enumerate(values))]
    (tmp_path / "xyz.csv").write_text("\n".join(lines) + "\n")
    streams = f"""  - name: xyz
    source: {{type: csv, path: {tmp_path}/xyz.csv, columns: [a, b, c], time_column: t}}
    window: {{size: 32, hop: 16}}
    bad_input: {{missing: fill_previous}}
    model: {{path: {model}, labels: [normal, anomaly], anomaly_labels: [anomaly]}}
"""
    rows = run_daemon(tmp_path, streams, runtime, columns="ts, raw_output")

    values[100, 1] = values[99, 1]
    interpreter = direct_interpreter(runtime, model)
    tensor_in = interpreter.get_input_details()[0]
    tensor_out = interpreter.get_output_details()[0]
    scale, zero_point = tensor_in["quantization"]
    expected = {}
    for end in range(32, 1001, 16):
        window = values[end - 32 : end]
        q = np.clip(np.rint(window / scale) + zero_point, -128, 127).astype(np.int8)
        interpreter.set_tensor(tensor_in["index"], q.reshape(1, 32, 3))
        interpreter.invoke()
        expected[float(end - 1)] = interpreter.get_tensor(tensor_out["index"]).tobytes()

    assert len(rows) == len(expected)
    assert {row["ts"]: row["raw_output"] for row in rows} == expected


def test_second_daemon_on_same_database_is_rejected(tmp_path: Path, broker: Broker) -> None:
    write_sine_csv(tmp_path / "sine.csv", 100_000)
    config = write_config(tmp_path, broker.port, tmp_path / "sine.csv", speed=10.0)
    first = DaemonProcess(config)
    try:
        first.wait_ready(tmp_path / "api.sock")
        second_config = tmp_path / "second.yaml"
        second_config.write_text(config.read_text().replace("api.sock", "api2.sock"))
        second = DaemonProcess(second_config)
        assert second.wait(timeout=60) == 1
        assert "is in use by another edgeward process" in second.stderr
        assert "Traceback" not in second.stderr

        third = DaemonProcess(config)
        assert third.wait(timeout=60) == 1
        assert "Traceback" not in third.stderr
        assert first.process.poll() is None
        assert first.terminate() == 0
    finally:
        first.kill()


def test_second_daemon_on_same_socket_is_rejected(tmp_path: Path, broker: Broker) -> None:
    write_sine_csv(tmp_path / "sine.csv", 100_000)
    config = write_config(tmp_path, broker.port, tmp_path / "sine.csv", speed=10.0)
    first = DaemonProcess(config)
    try:
        first.wait_ready(tmp_path / "api.sock")
        other = tmp_path / "other"
        other.mkdir()
        second_config = other / "edgeward.yaml"
        second_config.write_text(
            config.read_text()
            .replace(f"{tmp_path}/data", f"{other}/data")
            .replace(f"{tmp_path}/master.key", f"{other}/master.key")
        )
        second = DaemonProcess(second_config)
        assert second.wait(timeout=60) == 1
        assert f"another process is serving {tmp_path}/api.sock" in second.stderr
        assert "Traceback" not in second.stderr
        assert first.terminate() == 0
    finally:
        first.kill()

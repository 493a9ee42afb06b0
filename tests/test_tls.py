"""The uplink over TLS to a real mosquitto, with certificates the test makes with openssl."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REALDATA, Broker, DaemonProcess, Recorder, free_port, wait_for
from edgeward import client

pytestmark = pytest.mark.integration


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-keyout",
        str(key),
        "-out",
        str(cert),
    )
    return key, cert


def make_signed(folder: Path, name: str, ca: tuple[Path, Path], server: bool) -> tuple[Path, Path]:
    key, request, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.crt"
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        f"/CN={name}",
        "-keyout",
        str(key),
        "-out",
        str(request),
    )
    extensions = folder / f"{name}.ext"
    extensions.write_text(
        "subjectAltName = IP:127.0.0.1\n" if server else "extendedKeyUsage = clientAuth\n"
    )
    openssl(
        "x509",
        "-req",
        "-in",
        str(request),
        "-CA",
        str(ca[1]),
        "-CAkey",
        str(ca[0]),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(extensions),
        "-out",
        str(cert),
    )
    return key, cert


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Broker, int, int, Path, Path]]:
    folder = tmp_path / "pki"
    folder.mkdir()
    ca = make_ca(folder, "edgeward-test-ca")
    server = make_signed(folder, "broker", ca, server=True)
    workdir = tmp_path / "broker"
    workdir.mkdir()
    broker = Broker(workdir)
    tls_port, mutual_port = free_port(), free_port()
    # Broker writes "user root" when run as root, so mosquitto can read the certificates here.
    broker.config.write_text(
        broker.config.read_text()
        + f"listener {tls_port} 127.0.0.1\ncafile {ca[1]}\ncertfile {server[1]}\nkeyfile {server[0]}\n"
        + f"listener {mutual_port} 127.0.0.1\ncafile {ca[1]}\ncertfile {server[1]}\nkeyfile {server[0]}\n"
        + "require_certificate true\n"
    )
    broker.start()
    yield broker, tls_port, mutual_port, folder, ca[1]
    broker.stop()


def daemon_config(tmp_path: Path, index: int, port: int, tls: str) -> Path:
    model = REALDATA / "models" / "hello_world_int8.tflite"
    config = tmp_path / f"edgeward-{index}.yaml"
    config.write_text(
        f"""device_id: tls-device
database: {{path: {tmp_path}/db-{index}/edgeward.db, key_file: {tmp_path}/master.key, create_key: true}}
api: {{socket: {tmp_path}/api-{index}.sock}}
mqtt: {{host: 127.0.0.1, port: {port}, reconnect_min: 1, reconnect_max: 2, tls: {tls}}}
summaries: {{interval: 1s}}
streams:
  - name: sine
    source: {{type: synthetic, channels: 1, rate_hz: 50}}
    window: {{size: 1, hop: 1}}
    model: {{path: {model}, kind: regression}}
"""
    )
    return config


def test_tls_verifies_server_and_uses_client_certificate(
    tmp_path: Path, tls_broker: tuple[Broker, int, int, Path, Path]
) -> None:
    broker, tls_port, mutual_port, folder, ca_file = tls_broker
    recorder = Recorder(broker.port)
    wrong_ca = make_ca(folder, "someone-else")[1]
    client_key, client_cert = make_signed(
        folder, "device", (folder / "edgeward-test-ca.key", ca_file), server=False
    )

    runs = [
        (tls_port, f"{{ca_file: {ca_file}}}"),
        (tls_port, f"{{ca_file: {wrong_ca}}}"),
        (mutual_port, f"{{ca_file: {ca_file}, cert_file: {client_cert}, key_file: {client_key}}}"),
    ]
    daemons = [
        DaemonProcess(daemon_config(tmp_path, index, port, tls))
        for index, (port, tls) in enumerate(runs)
    ]
    try:
        sockets = [tmp_path / f"api-{index}.sock" for index in range(len(runs))]
        for daemon, socket_path in zip(daemons, sockets, strict=True):
            daemon.wait_ready(socket_path)

        def connected(index: int) -> bool:
            return bool(client.get(sockets[index], "/v1/status")["mqtt"]["connected"])

        wait_for(lambda: connected(0), 20, "no TLS connection with the right CA")
        wait_for(lambda: connected(2), 20, "no TLS connection with a client certificate")
        wait_for(lambda: len(recorder.summaries()) >= 2, 20, "no summary arrived over TLS")
        time.sleep(2)
        refused = client.get(sockets[1], "/v1/status")["mqtt"]
        assert refused["connected"] is False
        assert "the broker's certificate failed verification" in str(refused["last_error"])
        assert "check mqtt.tls.ca_file" in daemons[1].stderr
        for daemon in daemons:
            assert daemon.terminate() == 0
    finally:
        for daemon in daemons:
            daemon.kill()
        recorder.close()

"""The installed package under a real systemd, in a booted Debian 12 container.

The tests run in file order and build on each other: install, start,
query, watchdog, upgrade, purge.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from container import Container

from conftest import Broker

CONFIG = "/etc/edgeward/edgeward.yaml"
MAX_EXPOSURE = 2.0


def wait_until(check: Any, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(message)


def status(box: Container) -> dict[str, Any]:
    result = box.run(["edgeward", "status", "--json"])
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def main_pid(box: Container) -> int:
    return int(box.run(["systemctl", "show", "-p", "MainPID", "--value", "edgeward"]).stdout)


def test_install_creates_user_key_and_config(box: Container) -> None:
    result = box.run(["apt-get", "install", "-y", "-q", "/root/edgeward.deb"], timeout=600)
    assert "created the master key /etc/edgeward/master.key" in result.stdout
    assert box.run(["getent", "group", "edgeward"]).returncode == 0
    mode = box.run(["stat", "-c", "%a %U", "/etc/edgeward/master.key"]).stdout.split()
    assert mode == ["600", "root"]
    assert box.run(["dpkg-query", "-W", "-f", "${Conffiles}", "edgeward"]).stdout.count(CONFIG) == 1


def test_service_starts_and_syncs(box: Container, broker: Broker) -> None:
    # The host's mosquitto is reachable: the container shares the host's network.
    box.run(["sed", "-i", f"s/^  port: 1883$/  port: {broker.port}/", CONFIG])
    box.run(["sed", "-i", "s/^  interval: 60s$/  interval: 2s/", CONFIG])
    box.run(["systemctl", "restart", "edgeward"], timeout=120)
    assert box.run(["systemctl", "is-active", "edgeward"]).stdout.strip() == "active"

    def synced() -> bool:
        data = status(box)
        return data["store"]["results"] > 0 and data["mqtt"]["acknowledged"] > 0

    wait_until(synced, 30, "no result stored or summary acknowledged by the broker")
    socket = box.run(["stat", "-c", "%a %G", "/run/edgeward/api.sock"]).stdout.split()
    assert socket == ["660", "edgeward"]

    # A stream's log lines carry its name, model and data class as journal fields.
    lines = box.run(
        ["journalctl", "-u", "edgeward", "-o", "json", "--no-pager", "STREAM=vibration"]
    ).stdout.splitlines()
    assert lines
    entry = json.loads(lines[-1])
    assert entry["MODEL"] == "/usr/share/edgeward/models/demo_anomaly_int8.tflite"
    assert entry["DATA_CLASS"] == "inference"


def test_status_only_for_group_members(box: Container) -> None:
    box.run(["useradd", "--create-home", "--groups", "edgeward", "alice"])
    box.run(["useradd", "--create-home", "bob"])
    member = box.run(["runuser", "-u", "alice", "--", "edgeward", "status"], check=False)
    assert member.returncode == 0, member.stderr
    assert "edgeward 0.1.0 on" in member.stdout
    outsider = box.run(["runuser", "-u", "bob", "--", "edgeward", "status"], check=False)
    assert outsider.returncode != 0
    assert "ermission denied" in outsider.stderr


def test_reload_applies_config_and_rejects_bad_one(box: Container) -> None:
    box.run(["sed", "-i", "s/^device_id: edgeward-device$/device_id: reloaded-device/", CONFIG])
    pid = main_pid(box)
    box.run(["systemctl", "reload", "edgeward"], timeout=60)
    wait_until(
        lambda: status(box)["device_id"] == "reloaded-device", 15, "the reload was not applied"
    )
    assert main_pid(box) == pid

    box.run(["sh", "-c", f"echo 'not_a_key: 1' >> {CONFIG}"])
    box.run(["systemctl", "reload", "edgeward"], timeout=60)
    wait_until(
        lambda: "rejected" in box.run(["journalctl", "-u", "edgeward", "--no-pager"]).stdout,
        15,
        "the broken config was not rejected",
    )
    assert box.run(["systemctl", "is-active", "edgeward"]).stdout.strip() == "active"
    assert main_pid(box) == pid
    assert status(box)["device_id"] == "reloaded-device"
    box.run(["sed", "-i", "/^not_a_key: 1$/d", CONFIG])
    box.run(["sed", "-i", "s/^device_id: reloaded-device$/device_id: edgeward-device/", CONFIG])
    box.run(["systemctl", "reload", "edgeward"], timeout=60)


def test_security_exposure_is_ok(box: Container) -> None:
    output = box.run(["systemd-analyze", "security", "--no-pager", "edgeward.service"]).stdout
    found = re.search(r"Overall exposure level for edgeward\.service: ([0-9.]+)", output)
    assert found, output[-500:]
    assert float(found.group(1)) <= MAX_EXPOSURE


def test_watchdog_restarts_a_stopped_daemon(box: Container) -> None:
    # A shorter watchdog than the packaged 30 s, so the test waits seconds.
    box.run(["mkdir", "-p", "/etc/systemd/system/edgeward.service.d"])
    box.run(
        [
            "sh",
            "-c",
            "printf '[Service]\\nWatchdogSec=4s\\n' > /etc/systemd/system/edgeward.service.d/watchdog.conf",
        ]
    )
    box.run(["systemctl", "daemon-reload"])
    box.run(["systemctl", "restart", "edgeward"], timeout=120)
    stopped = main_pid(box)
    box.run(["kill", "-STOP", str(stopped)])
    wait_until(
        lambda: (
            main_pid(box) not in (0, stopped)
            and box.run(["systemctl", "is-active", "edgeward"], check=False).stdout.strip()
            == "active"
        ),
        60,
        "the watchdog did not restart the stopped daemon",
    )
    journal = box.run(["journalctl", "-u", "edgeward", "--no-pager"]).stdout
    assert "Watchdog timeout" in journal
    box.run(["rm", "/etc/systemd/system/edgeward.service.d/watchdog.conf"])
    box.run(["systemctl", "daemon-reload"])


def test_upgrade_keeps_config_key_and_data(box: Container) -> None:
    box.run(["sed", "-i", "s/^device_id: edgeward-device$/device_id: upgraded-device/", CONFIG])
    box.run(["systemctl", "restart", "edgeward"], timeout=120)
    wait_until(lambda: status(box)["store"]["results"] > 0, 30, "no results before the upgrade")
    key = box.run(["sha256sum", "/etc/edgeward/master.key"]).stdout
    before = status(box)["store"]["results"]

    result = box.run(
        [
            "apt-get",
            "install",
            "-y",
            "-q",
            "-o",
            "Dpkg::Options::=--force-confold",
            "/root/edgeward-newer.deb",
        ],
        timeout=600,
    )
    assert "created the master key" not in result.stdout
    assert box.run(["sha256sum", "/etc/edgeward/master.key"]).stdout == key
    assert "device_id: upgraded-device" in box.run(["cat", CONFIG]).stdout
    wait_until(
        lambda: (
            box.run(["systemctl", "is-active", "edgeward"], check=False).stdout.strip() == "active"
        ),
        60,
        "the service is not active after the upgrade",
    )
    after = status(box)
    assert after["device_id"] == "upgraded-device"
    assert after["store"]["results"] >= before


def test_purge_removes_state(box: Container) -> None:
    result = box.run(["apt-get", "purge", "-y", "-q", "edgeward"], timeout=300)
    assert "purge removes the database" in result.stdout
    for path in ("/var/lib/edgeward", "/etc/edgeward/master.key", CONFIG):
        assert box.run(["test", "-e", path], check=False).returncode != 0, path

"""A full disk: the daemon keeps running, gives up the lowest tier first, and recovers."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import REALDATA, DaemonProcess, wait_for
from edgeward import client

pytestmark = pytest.mark.integration

CONFIG = """device_id: full-disk
database: {{path: {disk}/edgeward.db, key_file: {tmp}/master.key, create_key: true, batch_interval: 0.05}}
api: {{socket: {tmp}/api.sock}}
mqtt: {{enabled: false}}
data_classes:
  bulk: {{tier: public}}
  vitals: {{tier: confidential}}
  summary: {{tier: internal}}
summaries: {{interval: 1h}}
streams:
  - name: chatter
    source: {{type: synthetic, channels: 1, rate_hz: 3000}}
    window: {{size: 1, hop: 1}}
    model: {{path: {model}, kind: regression}}
    data_class: bulk
  - name: heart
    source: {{type: synthetic, seed: 2, channels: 1, rate_hz: 40}}
    window: {{size: 1, hop: 1}}
    model: {{path: {model}, kind: regression}}
    data_class: vitals
"""


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_full_disk_keeps_higher_tier_and_recovers(tmp_path: Path, small_disk: Path) -> None:
    config = tmp_path / "edgeward.yaml"
    model = REALDATA / "models" / "hello_world_int8.tflite"
    config.write_text(CONFIG.format(disk=small_disk, tmp=tmp_path, model=model))
    socket_path = tmp_path / "api.sock"
    daemon = DaemonProcess(config)

    def store() -> dict[str, Any]:
        status: dict[str, Any] = client.get(socket_path, "/v1/status")["store"]
        return status

    def vitals() -> int:
        rows = client.get(socket_path, "/v1/results", {"stream": "heart", "limit": 10000})
        return int(rows["count"])

    try:
        daemon.wait_ready(socket_path)
        wait_for(
            lambda: store()["dropped_disk_full"].get("bulk", 0) > 0, 60, "the disk never filled"
        )
        assert store()["degraded"] is True

        before = vitals()
        time.sleep(3)
        assert vitals() > before
        assert daemon.process.poll() is None

        subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
        wait_for(lambda: store()["degraded"] is False, 30, "the daemon did not recover")
        # The reserve file given back on the full disk is made again.
        reserve = small_disk / "edgeward.db.reserve"
        wait_for(reserve.exists, 25, "the reserve file was not restored")
        dropped = store()["dropped_disk_full"]["bulk"]
        time.sleep(2)
        assert store()["dropped_disk_full"]["bulk"] == dropped
        assert daemon.terminate() == 0
    finally:
        daemon.kill()

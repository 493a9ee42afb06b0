"""The installed service under systemd: start time to READY, and RSS after a soak.

Run as root after `make deb`: .venv/bin/python benchmarks/service.py [--soak SECONDS]

The script boots the `make test-system` container, installs
dist/edgeward_*.deb with its default configuration (one synthetic stream,
the uplink pointed at a mosquitto on the host), and times `systemctl start
edgeward`, which returns when the daemon has sent READY=1 (Type=notify).
It then lets the service run for --soak seconds (600 by default) and reads
the main process's VmRSS and VmHWM from /proc.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "systemtests"))

from container import Container, cached_rootfs, unpack  # noqa: E402

_spec = importlib.util.spec_from_file_location("unit_conftest", REPO / "tests" / "conftest.py")
assert _spec is not None and _spec.loader is not None
_unit_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_unit_conftest)
Broker = _unit_conftest.Broker

STARTS = 3


def proc_kib(box: Container, pid: str, field: str) -> int:
    for line in box.run(["cat", f"/proc/{pid}/status"]).stdout.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--soak", type=float, default=600.0, help="seconds to run before reading RSS"
    )
    arguments = parser.parse_args()
    debs = sorted((REPO / "dist").glob("edgeward_*.deb"))
    if not debs:
        raise SystemExit("no dist/edgeward_*.deb; run 'make deb' first")

    with tempfile.TemporaryDirectory(prefix="edgeward-service-bench-") as folder:
        (Path(folder) / "broker").mkdir()
        broker = Broker(Path(folder) / "broker")
        broker.start()
        root = Path(folder) / "root"
        unpack(cached_rootfs(), root)
        shutil.copy(debs[-1], root / "root" / "edgeward.deb")
        box = Container(root, Path(folder) / "boot.log")
        box.boot()
        try:
            box.run(["apt-get", "install", "-y", "-q", "/root/edgeward.deb"], timeout=600)
            config = "/etc/edgeward/edgeward.yaml"
            box.run(["sed", "-i", f"s/^  port: 1883$/  port: {broker.port}/", config])
            starts = []
            for _ in range(STARTS):
                box.run(["systemctl", "stop", "edgeward"], timeout=120)
                started = time.monotonic()
                box.run(["systemctl", "start", "edgeward"], timeout=120)
                starts.append(time.monotonic() - started)
            pid = box.run(
                ["systemctl", "show", "-p", "MainPID", "--value", "edgeward"]
            ).stdout.strip()
            time.sleep(arguments.soak)
            status = json.loads(box.run(["edgeward", "status", "--json"]).stdout)
            figures = {
                "start_to_ready_seconds": [round(value, 2) for value in starts],
                "soak_seconds": arguments.soak,
                "rss_mib": round(proc_kib(box, pid, "VmRSS") / 1024, 1),
                "peak_rss_mib": round(proc_kib(box, pid, "VmHWM") / 1024, 1),
                "windows": sum(stream["windows"] for stream in status["streams"].values()),
                "acknowledged": status["mqtt"]["acknowledged"],
                "same_process": pid
                == box.run(
                    ["systemctl", "show", "-p", "MainPID", "--value", "edgeward"]
                ).stdout.strip(),
            }
        finally:
            box.poweroff()
            broker.stop()
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

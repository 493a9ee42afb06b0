"""Inference speed inside the hardened edgeward.service and outside it, in the test container.

Run as root after `make deb`: .venv/bin/python benchmarks/hardened.py [--add SETTING]

--add appends a unit setting to the sandbox, to show what it costs, for
example --add ProcSubset=pid.

The script boots the Debian 12 container of `make test-system`, installs
dist/edgeward_*.deb and times the packaged int8 model's invoke() with the
package's own Python, first as a plain process and then as a oneshot
service with every sandbox setting of edgeward.service. A sandbox setting
that hides /proc/cpuinfo, such as ProcSubset=pid, makes the TFLite runtime
fall back to slow kernels; the two medians must agree within 10 %.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "systemtests"))

from container import Container, cached_rootfs, unpack  # noqa: E402

MAX_DIFFERENCE = 0.10
RUNS = 5

TIMER = """
import json, statistics, time
import numpy as np
from tflite_runtime.interpreter import Interpreter
interpreter = Interpreter(model_path="/usr/share/edgeward/models/demo_anomaly_int8.tflite")
interpreter.allocate_tensors()
tensor = interpreter.get_input_details()[0]
window = np.random.default_rng(1).integers(-128, 127, size=tensor["shape"], dtype=np.int8)
interpreter.set_tensor(tensor["index"], window)
for _ in range(500):
    interpreter.invoke()
times = []
for _ in range(5000):
    started = time.perf_counter()
    interpreter.invoke()
    times.append(time.perf_counter() - started)
print(json.dumps({"median_us": statistics.median(times) * 1e6}))
"""

# Lines of edgeward.service that start the daemon rather than sandbox it.
NOT_SANDBOX = (
    "Type=",
    "NotifyAccess=",
    "Exec",
    "Restart",
    "Watchdog",
    "Timeout",
    "LoadCredential=",
)


def bench_unit(unit: str, extra: list[str]) -> str:
    """Turn the installed unit into a oneshot that runs the timer under the same sandbox."""
    service = unit.split("[Service]", 1)[1].split("[Install]", 1)[0]
    kept = [
        line for line in service.splitlines() if line and not line.startswith(("#", *NOT_SANDBOX))
    ]
    return "\n".join(
        [
            "[Service]",
            "Type=oneshot",
            "ExecStart=/usr/lib/edgeward/bin/python /usr/local/lib/edgeward-timer.py",
            *kept,
            *extra,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--add", action="append", default=[], help="a unit setting to add")
    arguments = parser.parse_args()
    debs = sorted((REPO / "dist").glob("edgeward_*.deb"))
    if not debs:
        raise SystemExit("no dist/edgeward_*.deb; run 'make deb' first")
    with tempfile.TemporaryDirectory(prefix="edgeward-hardened-") as folder:
        root = Path(folder) / "root"
        unpack(cached_rootfs(), root)
        shutil.copy(debs[-1], root / "root" / "edgeward.deb")
        (root / "usr" / "local" / "lib").mkdir(parents=True, exist_ok=True)
        (root / "usr" / "local" / "lib" / "edgeward-timer.py").write_text(TIMER)
        box = Container(root, Path(folder) / "boot.log")
        box.boot()
        try:
            box.run(["apt-get", "install", "-y", "-q", "/root/edgeward.deb"], timeout=600)
            box.run(["systemctl", "stop", "edgeward"])
            unit = box.run(["cat", "/lib/systemd/system/edgeward.service"]).stdout
            (root / "etc" / "systemd" / "system" / "edgeward-timer.service").write_text(
                bench_unit(unit, arguments.add)
            )
            box.run(["systemctl", "daemon-reload"])

            outside, inside = [], []
            for _ in range(RUNS):
                plain = box.run(
                    ["/usr/lib/edgeward/bin/python", "/usr/local/lib/edgeward-timer.py"]
                )
                outside.append(json.loads(plain.stdout)["median_us"])
                box.run(["journalctl", "--rotate", "--vacuum-time=1s"], check=False)
                box.run(["systemctl", "start", "edgeward-timer"], timeout=300)
                output = box.run(
                    ["journalctl", "-u", "edgeward-timer", "-o", "cat", "--no-pager"]
                ).stdout
                line = [text for text in output.splitlines() if text.startswith("{")][-1]
                inside.append(json.loads(line)["median_us"])
        finally:
            box.poweroff()

    figures = {
        "invoke_median_us_outside": round(statistics.median(outside), 2),
        "invoke_median_us_in_hardened_unit": round(statistics.median(inside), 2),
        "ratio": round(statistics.median(inside) / statistics.median(outside), 3),
        "runs": RUNS,
        "added_settings": arguments.add,
    }
    print(json.dumps(figures, indent=2))
    if abs(figures["ratio"] - 1) > MAX_DIFFERENCE:
        raise SystemExit(f"the hardened unit's invoke differs by more than {MAX_DIFFERENCE:.0%}")


if __name__ == "__main__":
    main()

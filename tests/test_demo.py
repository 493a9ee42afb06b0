"""`edgeward demo` runs the embedded default end to end and reports what it did."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_demo_reports_results_and_deliveries(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeward.cli",
            "demo",
            "--duration",
            "12",
            "--state-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    windows = re.search(r"windows processed:\s+(\d+)", result.stdout)
    committed = re.search(r"results committed:\s+(\d+)", result.stdout)
    delivered = re.search(r"summaries received by the broker's subscriber: (\d+)", result.stdout)
    written = re.search(r"summaries written:\s+(\d+)", result.stdout)
    assert windows, result.stdout
    assert committed, result.stdout
    assert delivered, result.stdout
    assert written, result.stdout
    assert int(windows.group(1)) > 50
    assert committed.group(1) == windows.group(1)
    assert delivered.group(1) == written.group(1)
    assert "latest results, read through the local API" in result.stdout
    assert (tmp_path / "edgeward.db").exists()

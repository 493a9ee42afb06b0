"""Real inputs nobody here wrote, run through the daemon with ordinary config files.

Each test writes a config, runs `edgeward run --until-done` as a subprocess,
and reads the results back from the encrypted database.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import REALDATA, DaemonProcess
from edgeward.agent.runtime import installed_runtimes
from edgeward.security.keys import DATABASE_KEY_INFO, derive_key, load_master_key
from edgeward.store.database import open_database

pytestmark = pytest.mark.integration

FEATURES = REALDATA / "datasets" / "model_inputs" / "derived_micro_speech_features"
ST_HAR = REALDATA / "datasets" / "st_har"
NAB = REALDATA / "datasets" / "nab"


def run_daemon(tmp_path: Path, streams: str, runtime: str = "auto") -> list[dict[str, Any]]:
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
    rows = connection.execute(
        "SELECT stream, ts, label, score, anomaly FROM results ORDER BY stream, ts"
    ).fetchall()
    connection.close()
    return [
        {"stream": r[0], "ts": r[1], "label": r[2], "score": r[3], "anomaly": bool(r[4])}
        for r in rows
    ]


@pytest.mark.parametrize("runtime", installed_runtimes())
def test_micro_speech_labels(tmp_path: Path, runtime: str) -> None:
    streams = ""
    for word in ("yes", "no", "silence", "noise"):
        streams += f"""  - name: "{word}"
    source: {{type: csv, path: {FEATURES}/{word}_1000ms_features_int8.csv, header: false,
             columns: {list(range(40))}}}
    window: {{size: 49, hop: 49}}
    model:
      path: {REALDATA}/models/micro_speech_quantized.tflite
      labels: [silence, unknown, "yes", "no"]
      input: raw
"""
    rows = run_daemon(tmp_path, streams, runtime)
    labels = {row["stream"]: row["label"] for row in rows}
    assert len(rows) == 4
    assert labels == {"yes": "yes", "no": "no", "silence": "silence", "noise": "silence"}

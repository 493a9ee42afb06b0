"""Real inputs nobody here wrote, run through the daemon with ordinary config files.

Each test writes a config, runs `edgeward run --until-done` as a subprocess,
and reads the results back from the encrypted database.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
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


def direct_interpreter(runtime: str, model: Path) -> Any:
    if runtime == "litert":
        from ai_edge_litert.interpreter import Interpreter
    else:
        from tflite_runtime.interpreter import Interpreter
    interpreter = Interpreter(model_path=str(model))
    interpreter.allocate_tensors()
    return interpreter


@pytest.mark.parametrize("runtime", installed_runtimes())
def test_hello_world_matches_direct_interpreter(tmp_path: Path, runtime: str) -> None:
    model = REALDATA / "models" / "hello_world_int8.tflite"
    xs = np.linspace(0, 2 * np.pi, 200)
    lines = ["t,x", *(f"{1000 + i},{x!r}" for i, x in enumerate(xs))]
    (tmp_path / "x.csv").write_text("\n".join(lines) + "\n")
    streams = f"""  - name: sine
    source: {{type: csv, path: {tmp_path}/x.csv, columns: [x], time_column: t}}
    window: {{size: 1, hop: 1}}
    model: {{path: {model}, kind: regression}}
"""
    rows = run_daemon(tmp_path, streams, runtime)

    interpreter = direct_interpreter(runtime, model)
    tensor_in = interpreter.get_input_details()[0]
    tensor_out = interpreter.get_output_details()[0]
    scale_in, zero_in = tensor_in["quantization"]
    scale_out, zero_out = tensor_out["quantization"]
    expected = []
    for x in xs:
        q = np.clip(np.rint(x / scale_in) + zero_in, -128, 127).astype(np.int8).reshape(1, 1)
        interpreter.set_tensor(tensor_in["index"], q)
        interpreter.invoke()
        raw = int(interpreter.get_tensor(tensor_out["index"])[0, 0])
        expected.append((raw - zero_out) * scale_out)

    assert len(rows) == len(xs)
    assert [row["score"] for row in rows] == expected
    assert abs(rows[50]["score"] - np.sin(xs[50])) < 0.1

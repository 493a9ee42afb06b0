"""Real inputs nobody here wrote, run through the daemon with ordinary config files.

Each test writes a config, runs `edgeward run --until-done` as a subprocess,
and reads the results back from the encrypted database.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import MODELS, REALDATA, direct_interpreter, run_daemon
from edgeward.agent.runtime import installed_runtimes

pytestmark = pytest.mark.integration

FEATURES = REALDATA / "datasets" / "model_inputs" / "derived_micro_speech_features"
ST_HAR = REALDATA / "datasets" / "st_har"
NAB = REALDATA / "datasets" / "nab"


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


def model_sidecar(name: str) -> dict[str, Any]:
    sidecar: dict[str, Any] = json.loads((MODELS / f"{name}.json").read_text())
    return sidecar


@pytest.mark.parametrize("runtime", installed_runtimes())
def test_har_held_out_accuracy(tmp_path: Path, runtime: str) -> None:
    meta = model_sidecar("har_int8")
    held_out = json.loads((MODELS / "har_split.json").read_text())["held_out"]
    streams = ""
    for activity in meta["labels"]:
        files = [str(ST_HAR / f) for f in held_out if f.startswith(activity + "/")]
        streams += f"""  - name: {activity}
    source: {{type: csv, path: {json.dumps(files)}, header: false, columns: [0, 1, 2], rate_hz: 26}}
    window: {{size: {meta["window"]}, hop: {meta["hop"]}}}
    normalize: {{mean: {meta["normalize"]["mean"]}, std: {meta["normalize"]["std"]}}}
    model: {{path: {MODELS / meta["model"]}, labels: {json.dumps(meta["labels"])}}}
"""
    rows = run_daemon(tmp_path, streams, runtime)

    correct = sum(row["label"] == row["stream"] for row in rows)
    accuracy = correct / len(rows)
    print(f"HAR held-out accuracy with {runtime}: {accuracy:.4f} over {len(rows)} windows")
    assert len(rows) == 888
    assert accuracy >= 0.97


def labelled_windows() -> list[tuple[float, float]]:
    windows = json.loads((NAB / "combined_windows.json").read_text())
    spans = windows["realKnownCause/machine_temperature_system_failure.csv"]
    return [(parse_utc(start), parse_utc(end)) for start, end in spans]


def parse_utc(text: str) -> float:
    return datetime.strptime(text[:19], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize("runtime", installed_runtimes())
def test_nab_anomaly_windows_flagged(tmp_path: Path, runtime: str) -> None:
    meta = model_sidecar("nab_autoencoder_int8")
    streams = f"""  - name: machine-temperature
    source:
      type: csv
      path: {NAB}/machine_temperature_system_failure.csv
      columns: [value]
      time_column: timestamp
      time_format: "%Y-%m-%d %H:%M:%S"
    window: {{size: {meta["window"]}, hop: {meta["hop"]}}}
    normalize: {{mean: {meta["normalize"]["mean"]}, std: {meta["normalize"]["std"]}}}
    model: {{path: {MODELS / meta["model"]}, kind: autoencoder, threshold: {meta["threshold"]}}}
"""
    rows = run_daemon(tmp_path, streams, runtime)

    spans = labelled_windows()
    inside = [row for row in rows if any(start <= row["ts"] <= end for start, end in spans)]
    outside = [row for row in rows if row not in inside]
    detected = sum(
        any(row["anomaly"] and start <= row["ts"] <= end for row in inside) for start, end in spans
    )
    false_alarms = sum(row["anomaly"] for row in outside)
    rate = false_alarms / len(outside)
    print(
        f"NAB with {runtime}: {detected} of {len(spans)} labelled windows flagged, "
        f"{sum(r['anomaly'] for r in inside)} of {len(inside)} windows inside flagged, "
        f"{false_alarms} of {len(outside)} outside ({rate:.4f})"
    )
    assert len(rows) == 3775
    assert detected >= 3
    assert rate < 0.05

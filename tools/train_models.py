#!/usr/bin/env python3
"""Train edgeward's bundled int8 TFLite models and evaluate them as the daemon runs them.

Each model is written to models/<name>.tflite with a models/<name>.json sidecar
that records its windowing, normalization, labels, threshold and sha256:

- demo_anomaly_int8: normal/anomaly classifier for the synthetic signal of
  edgeward.agent.synthetic, the model of the embedded default configuration.
- har_int8: running/stationary/walking classifier for a 3-axis accelerometer
  sampled at 26 Hz in mg (the ST HAR data set).
- nab_autoencoder_int8: autoencoder for the NAB series
  machine_temperature_system_failure.csv (one temperature every 5 minutes).

Training needs TensorFlow, which the daemon never uses, so it runs in a
throwaway venv outside the repository:

    python3 -m venv /tmp/train-venv
    /tmp/train-venv/bin/pip install -r tools/requirements-train.txt
    /tmp/train-venv/bin/python tools/train_models.py train all --data-dir DATA

Evaluation needs only numpy and a TFLite runtime, as the daemon does. Run it in
a venv with tflite-runtime==2.14.0 and numpy<2, or with ai-edge-litert:

    python tools/train_models.py evaluate all --data-dir DATA --runtime tflite-runtime
    python tools/train_models.py evaluate all --data-dir DATA --runtime litert

DATA is a folder laid out as follows. The demo model needs no data folder.

    DATA/st_har/{running,stationary,walking}/<class>_<NN>_26Hz_4g_mg.csv
    DATA/nab/machine_temperature_system_failure.csv
    DATA/nab/combined_windows.json

Every random source is seeded and TensorFlow runs single-threaded with
deterministic ops, so the same versions, data and command write the same
.tflite bytes. NOTE: that was checked on one x86-64 machine only. Other CPUs
or TensorFlow builds may round differently and train other weights.

This is an offline tool. Nothing under src/ may import it.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import hashlib
import importlib
import io
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger("train_models")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS_DIR = REPO_ROOT / "models"

# A bundled model must stay small enough to ship in the package.
MAX_MODEL_BYTES = 100 * 1024

FloatArray = npt.NDArray[np.float64]


# --- Model specifications ---------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """The daemon-facing description of one model, written to its sidecar."""

    name: str
    kind: str
    labels: list[str]
    window: int
    hop: int
    channels: int
    input_shape: list[int]

    @property
    def file_name(self) -> str:
        return f"{self.name}.tflite"


DEMO = ModelSpec(
    name="demo_anomaly_int8",
    kind="classifier",
    labels=["normal", "anomaly"],
    window=32,
    hop=16,
    channels=3,
    input_shape=[1, 32, 3],
)
HAR = ModelSpec(
    name="har_int8",
    kind="classifier",
    labels=["running", "stationary", "walking"],
    window=52,
    hop=26,
    channels=3,
    input_shape=[1, 52, 3],
)
NAB = ModelSpec(
    name="nab_autoencoder_int8",
    kind="autoencoder",
    labels=[],
    window=36,
    hop=6,
    channels=1,
    input_shape=[1, 36],
)
SPECS = {"demo": DEMO, "har": HAR, "nab": NAB}

# Demo model: trained and evaluated on SyntheticSignal(seed, channels=3,
# rate_hz=50.0, anomaly_rate=0.002). The held-out seeds include 1 and 2, the
# seeds of the embedded default's streams.
DEMO_RATE_HZ = 50.0
DEMO_ANOMALY_RATE = 0.002
DEMO_TRAIN_SEEDS = list(range(100, 140))
DEMO_HELD_OUT_SEEDS = list(range(0, 10))
DEMO_SAMPLES_PER_SEED = 20_000
# The streams of the embedded default (src/edgeward/data/demo.yaml) as
# (seed, rate_hz, anomaly_rate), evaluated on 200,000 samples each. They run
# at 100 Hz, so their sines change half as fast per sample as in training.
DEMO_DEFAULT_STREAMS = [(1, 100.0, 0.002), (2, 100.0, 0.004)]
DEMO_DEFAULT_STREAM_SAMPLES = 200_000
DEMO_NORMALIZE = {"mean": 0.0, "std": 1.0}

# HAR model: values are in mg, so std 1000 feeds the model values in g.
HAR_NORMALIZE = {"mean": 0.0, "std": 1000.0}
HAR_ROWS_PER_FILE = 1000
# Training windows overlap more than the daemon's hop to get more examples
# out of the 68 training files. Held-out windows use the daemon's hop.
HAR_TRAIN_HOP = 13
HAR_EPOCHS = 60

# NAB model. The training part is every accepted row before the first
# labelled anomaly window. The score threshold is this percentile of the
# training windows' scores.
NAB_CSV = "machine_temperature_system_failure.csv"
NAB_WINDOWS_JSON = "combined_windows.json"
NAB_WINDOWS_KEY = "realKnownCause/machine_temperature_system_failure.csv"
NAB_THRESHOLD_PERCENTILE = 98.0
# Each training window is shifted by a random level offset, uniform in
# [-NAB_LEVEL_SHIFT, NAB_LEVEL_SHIFT] in units of the training std, so the
# model learns the shape of normal windows at any level in that band. The
# int8 input range is calibrated on windows shifted across the same band.
# A value beyond that range is clipped by the input quantization, and the
# score, which compares the output with the unclipped input, grows with the
# distance.
NAB_LEVEL_SHIFT = 2.0
NAB_EPOCHS = 200

SEEDS = {"demo": 11, "har": 12, "nab": 13}


# --- Windowing and data sets ------------------------------------------------


def sliding_windows(samples: npt.NDArray[Any], window: int, hop: int) -> npt.NDArray[Any]:
    """Cut [n, channels] samples into [count, window, channels] windows.

    Windows start at sample 0, hop, 2 * hop, ... and a final partial window is
    dropped, as in the daemon's Windower (edgeward.agent.windowing).
    """
    starts = range(0, len(samples) - window + 1, hop)
    if len(starts) == 0:
        return np.empty((0, window, *samples.shape[1:]), dtype=samples.dtype)
    return np.stack([samples[start : start + window] for start in starts])


def synthetic_windows(
    seeds: Sequence[int],
    samples_per_seed: int = DEMO_SAMPLES_PER_SEED,
    rate_hz: float = DEMO_RATE_HZ,
    anomaly_rate: float = DEMO_ANOMALY_RATE,
) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """Return demo windows [n, 32, 3] and their labels (0 normal, 1 anomaly).

    A window is labelled anomaly when any of its samples is flagged. Each
    seed is a separate signal, so no window spans two seeds.
    """
    source_root = str(REPO_ROOT / "src")
    if source_root not in sys.path:
        sys.path.insert(0, source_root)
    from edgeward.agent.synthetic import SyntheticSignal

    all_windows = []
    all_labels = []
    for seed in seeds:
        signal = SyntheticSignal(
            seed, channels=DEMO.channels, rate_hz=rate_hz, anomaly_rate=anomaly_rate
        )
        values, flags = signal.read(samples_per_seed)
        windows = sliding_windows(values, DEMO.window, DEMO.hop)
        window_flags = sliding_windows(flags[:, None], DEMO.window, DEMO.hop)
        all_windows.append(windows)
        all_labels.append(window_flags.any(axis=(1, 2)).astype(np.int64))
    return np.concatenate(all_windows), np.concatenate(all_labels)


def har_file_number(relative_path: str) -> int:
    """Return NN from a path such as 'running/running_05_26Hz_4g_mg.csv'."""
    stem = Path(relative_path).name
    parts = stem.split("_")
    if len(parts) < 2 or not parts[1].isdigit():
        raise ValueError(f"ST HAR file name {stem!r} does not match <class>_<NN>_26Hz_4g_mg.csv")
    return int(parts[1])


def har_split(data_dir: Path) -> dict[str, list[str]]:
    """Split the ST HAR files by file: every file whose NN % 4 == 1 is held out."""
    root = data_dir / "st_har"
    held_out = []
    train = []
    for label in HAR.labels:
        folder = root / label
        files = sorted(folder.glob("*.csv"))
        if not files:
            raise FileNotFoundError(f"no ST HAR files found in {folder}; check --data-dir")
        for path in files:
            relative = f"{label}/{path.name}"
            if har_file_number(relative) % 4 == 1:
                held_out.append(relative)
            else:
                train.append(relative)
    return {"held_out": held_out, "train": train}


def read_har_file(path: Path) -> FloatArray:
    """Read one ST HAR CSV: no header, 1000 rows of x, y, z in mg."""
    samples = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    if samples.shape != (HAR_ROWS_PER_FILE, HAR.channels):
        raise ValueError(
            f"{path}: expected {HAR_ROWS_PER_FILE} rows of {HAR.channels} columns, got shape {samples.shape}"
        )
    return samples


def har_windows(
    data_dir: Path, relative_paths: Sequence[str], hop: int
) -> tuple[FloatArray, npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Return windows [n, 52, 3] in mg, their label indexes and the index of their file.

    Windows never cross a file boundary.
    """
    all_windows = []
    all_labels = []
    all_files = []
    for file_index, relative in enumerate(relative_paths):
        label = relative.split("/")[0]
        windows = sliding_windows(read_har_file(data_dir / "st_har" / relative), HAR.window, hop)
        all_windows.append(windows)
        all_labels.append(np.full(len(windows), HAR.labels.index(label), dtype=np.int64))
        all_files.append(np.full(len(windows), file_index, dtype=np.int64))
    return np.concatenate(all_windows), np.concatenate(all_labels), np.concatenate(all_files)


@dataclass
class NabSeries:
    """The accepted rows of the NAB CSV and its labelled anomaly windows."""

    timestamps: npt.NDArray[np.datetime64]
    values: FloatArray
    skipped_rows: int
    anomaly_windows: list[tuple[np.datetime64, np.datetime64]]

    def training_end(self) -> int:
        """Return the index of the first row at or after the first labelled window's start."""
        first_start = min(start for start, _ in self.anomaly_windows)
        return int(np.searchsorted(self.timestamps, first_start, side="left"))


def parse_timestamp(text: str) -> np.datetime64:
    """Parse a NAB timestamp such as '2013-12-10 06:25:00.000000' to whole seconds."""
    return np.datetime64(datetime.datetime.fromisoformat(text), "s")


def read_nab_series(data_dir: Path) -> NabSeries:
    """Read the NAB series in file order with the daemon's default timestamp policy.

    A row whose timestamp is not later than the previous accepted row's is
    skipped. In machine_temperature_system_failure.csv the clock steps back
    once, so 12 rows are skipped.
    """
    csv_path = data_dir / "nab" / NAB_CSV
    timestamps: list[datetime.datetime] = []
    values: list[float] = []
    skipped = 0
    with csv_path.open(newline="") as file:
        reader = csv.reader(file)
        header = next(reader)
        if header != ["timestamp", "value"]:
            raise ValueError(
                f"{csv_path}: expected the header 'timestamp,value', got {','.join(header)!r}"
            )
        for row in reader:
            timestamp = datetime.datetime.fromisoformat(row[0])
            if timestamps and timestamp <= timestamps[-1]:
                skipped += 1
                continue
            timestamps.append(timestamp)
            values.append(float(row[1]))

    windows_path = data_dir / "nab" / NAB_WINDOWS_JSON
    with windows_path.open() as file:
        labelled = json.load(file)[NAB_WINDOWS_KEY]
    anomaly_windows = [(parse_timestamp(start), parse_timestamp(end)) for start, end in labelled]
    return NabSeries(
        timestamps=np.array(timestamps, dtype="datetime64[s]"),
        values=np.array(values, dtype=np.float64),
        skipped_rows=skipped,
        anomaly_windows=anomaly_windows,
    )


def nab_normalization(series: NabSeries) -> dict[str, float]:
    """Return the mean and std of the training part's values."""
    training = series.values[: series.training_end()]
    return {"mean": float(training.mean()), "std": float(training.std())}


# --- The daemon's inference contract ----------------------------------------

# Interpreter classes by runtime name. "tflite-runtime" and "litert" are the
# names the daemon's runtime.tflite option uses. "tensorflow" is TensorFlow's
# own interpreter, used only during training to set the NAB threshold.
RUNTIME_INTERPRETERS = {
    "tflite-runtime": ("tflite_runtime.interpreter", "Interpreter"),
    "litert": ("ai_edge_litert.interpreter", "Interpreter"),
    "tensorflow": ("tensorflow", "lite.Interpreter"),
}
RUNTIME_PACKAGES = {
    "tflite-runtime": "tflite-runtime==2.14.0 with numpy<2",
    "litert": "ai-edge-litert",
    "tensorflow": "tools/requirements-train.txt",
}


def interpreter_class(runtime: str) -> Any:
    module_name, attribute_path = RUNTIME_INTERPRETERS[runtime]
    try:
        found = importlib.import_module(module_name)
    except ImportError as error:
        raise SystemExit(
            f"runtime {runtime!r} is not installed in this Python ({error}); install {RUNTIME_PACKAGES[runtime]}"
        ) from error
    for attribute in attribute_path.split("."):
        found = getattr(found, attribute)
    return found


class QuantizedModel:
    """An int8 TFLite model run one window per invoke, exactly as the daemon runs it.

    A [window, channels] window is normalized as (x - mean) / std, reshaped
    row-major to the input shape and quantized with the input tensor's scale
    and zero point. Outputs are dequantized with the output tensor's.
    """

    def __init__(self, model: Path | bytes, runtime: str, normalize: dict[str, Any]) -> None:
        interpreter_type = interpreter_class(runtime)
        source = (
            {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
        )
        with warnings.catch_warnings():
            # TensorFlow 2.21 warns that tf.lite.Interpreter is deprecated.
            warnings.simplefilter("ignore", UserWarning)
            self._interpreter = interpreter_type(**source, num_threads=1)
        self._interpreter.allocate_tensors()
        self.input = self._interpreter.get_input_details()[0]
        self.output = self._interpreter.get_output_details()[0]
        self._mean = np.asarray(normalize["mean"], dtype=np.float64)
        self._std = np.asarray(normalize["std"], dtype=np.float64)

    def normalize(self, window: FloatArray) -> FloatArray:
        return (window - self._mean) / self._std

    def invoke(self, normalized: FloatArray) -> npt.NDArray[np.int8]:
        """Quantize a normalized window, invoke the model and return its raw int8 output."""
        scale, zero_point = self.input["quantization"]
        quantized = np.clip(np.rint(normalized / scale) + zero_point, -128, 127)
        self._interpreter.set_tensor(
            self.input["index"], quantized.astype(np.int8).reshape(self.input["shape"])
        )
        self._interpreter.invoke()
        raw: npt.NDArray[np.int8] = self._interpreter.get_tensor(self.output["index"]).copy()
        return raw

    def run(self, window: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Invoke the model on one window and return (flat dequantized outputs, flat normalized input)."""
        normalized = self.normalize(window)
        raw = self.invoke(normalized)
        scale, zero_point = self.output["quantization"]
        outputs = (raw.astype(np.float64) - zero_point) * scale
        return outputs.reshape(-1), normalized.reshape(-1)

    def classify(self, window: FloatArray) -> tuple[int, float]:
        """Return (argmax label index, max output) for one window."""
        outputs, _ = self.run(window)
        best = int(np.argmax(outputs))
        return best, float(outputs[best])

    def reconstruction_score(self, window: FloatArray) -> float:
        """Return mean((y - x_normalized) ** 2) for one window.

        x_normalized is not clipped, so a value outside the input tensor's
        range adds its distance beyond that range to the error.
        """
        outputs, normalized = self.run(window)
        return float(np.mean((outputs - normalized) ** 2))

    def io_details(self) -> dict[str, Any]:
        """Return the shapes, dtypes and quantization parameters of the input and output tensors."""
        details = {}
        for role, tensor in (("input", self.input), ("output", self.output)):
            scale, zero_point = tensor["quantization"]
            details[role] = {
                "name": tensor["name"],
                "shape": [int(d) for d in tensor["shape"]],
                "dtype": np.dtype(tensor["dtype"]).name,
                "scale": float(scale),
                "zero_point": int(zero_point),
            }
        return details


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_sidecar(models_dir: Path, spec: ModelSpec) -> dict[str, Any]:
    """Read a model's sidecar and check it against the .tflite file next to it."""
    sidecar_path = models_dir / f"{spec.name}.json"
    if not sidecar_path.is_file():
        raise SystemExit(
            f"sidecar {sidecar_path} not found; train the model first or check --models-dir"
        )
    with sidecar_path.open() as file:
        sidecar: dict[str, Any] = json.load(file)
    model_path = models_dir / sidecar["model"]
    actual = file_sha256(model_path)
    if actual != sidecar["sha256"]:
        raise SystemExit(
            f"{model_path}: sha256 is {actual} but {sidecar_path} records {sidecar['sha256']}; retrain the model"
        )
    return sidecar


def open_model(
    models_dir: Path, spec: ModelSpec, runtime: str
) -> tuple[QuantizedModel, dict[str, Any]]:
    """Load a model with its sidecar and check that its I/O is int8 with the recorded input shape."""
    sidecar = read_sidecar(models_dir, spec)
    model = QuantizedModel(models_dir / sidecar["model"], runtime, sidecar["normalize"])
    details = model.io_details()
    for role in ("input", "output"):
        if details[role]["dtype"] != "int8":
            raise SystemExit(
                f"{spec.file_name}: the {role} tensor is {details[role]['dtype']}, expected int8"
            )
    if details["input"]["shape"] != sidecar["input_shape"]:
        raise SystemExit(
            f"{spec.file_name}: the input shape is {details['input']['shape']} "
            f"but the sidecar records {sidecar['input_shape']}"
        )
    return model, sidecar


# --- Evaluation --------------------------------------------------------------


def classification_report(
    true: npt.NDArray[np.int64], predicted: npt.NDArray[np.int64], labels: list[str]
) -> dict[str, Any]:
    """Return accuracy, per-class recall and the confusion matrix (rows true, columns predicted)."""
    confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(true, predicted, strict=True):
        confusion[t, p] += 1
    recall = {}
    for index, label in enumerate(labels):
        total = int(confusion[index].sum())
        recall[label] = float(confusion[index, index] / total) if total else None
    return {
        "windows": int(len(true)),
        "accuracy": float(np.mean(true == predicted)),
        "recall": recall,
        "confusion": {"labels": labels, "rows_true_columns_predicted": confusion.tolist()},
    }


def classify_all(model: QuantizedModel, windows: FloatArray) -> npt.NDArray[np.int64]:
    return np.array([model.classify(window)[0] for window in windows], dtype=np.int64)


def evaluate_demo(models_dir: Path, data_dir: Path | None, runtime: str) -> dict[str, Any]:
    model, sidecar = open_model(models_dir, DEMO, runtime)
    windows, labels = synthetic_windows(DEMO_HELD_OUT_SEEDS)
    report = classification_report(labels, classify_all(model, windows), DEMO.labels)

    default_streams = []
    for seed, rate_hz, anomaly_rate in DEMO_DEFAULT_STREAMS:
        windows, labels = synthetic_windows(
            [seed], DEMO_DEFAULT_STREAM_SAMPLES, rate_hz, anomaly_rate
        )
        stream_report = classification_report(labels, classify_all(model, windows), DEMO.labels)
        stream_report["stream"] = {"seed": seed, "rate_hz": rate_hz, "anomaly_rate": anomaly_rate}
        default_streams.append(stream_report)
    return {
        "model": sidecar["model"],
        "runtime": runtime,
        "io": model.io_details(),
        "held_out_seeds": DEMO_HELD_OUT_SEEDS,
        "held_out": report,
        "default_streams": default_streams,
    }


def evaluate_har(models_dir: Path, data_dir: Path | None, runtime: str) -> dict[str, Any]:
    data_dir = require_data_dir(data_dir)
    model, sidecar = open_model(models_dir, HAR, runtime)
    split = har_split(data_dir)
    windows, labels, files = har_windows(data_dir, split["held_out"], HAR.hop)
    predicted = classify_all(model, windows)
    report = classification_report(labels, predicted, HAR.labels)

    per_file = {}
    for file_index, relative in enumerate(split["held_out"]):
        in_file = files == file_index
        per_file[relative] = float(np.mean(predicted[in_file] == labels[in_file]))
    report["accuracy_per_file"] = per_file
    return {
        "model": sidecar["model"],
        "runtime": runtime,
        "io": model.io_details(),
        "held_out_files": len(split["held_out"]),
        "held_out": report,
    }


def nab_window_scores(
    model: QuantizedModel, series: NabSeries, hop: int
) -> tuple[FloatArray, npt.NDArray[np.datetime64]]:
    """Score every window of the whole series and return (scores, time of each window's last sample)."""
    windows = sliding_windows(series.values[:, None], NAB.window, hop)
    last_indexes = np.arange(len(windows)) * hop + NAB.window - 1
    scores = np.array([model.reconstruction_score(window) for window in windows])
    return scores, series.timestamps[last_indexes]


def evaluate_nab(models_dir: Path, data_dir: Path | None, runtime: str) -> dict[str, Any]:
    data_dir = require_data_dir(data_dir)
    model, sidecar = open_model(models_dir, NAB, runtime)
    series = read_nab_series(data_dir)
    threshold = sidecar["threshold"]
    scores, times = nab_window_scores(model, series, NAB.hop)
    flagged = scores > threshold

    inside_any = np.zeros(len(times), dtype=bool)
    per_window: list[dict[str, Any]] = []
    for start, end in series.anomaly_windows:
        inside = (times >= start) & (times <= end)
        inside_any |= inside
        per_window.append(
            {
                "start": str(start),
                "end": str(end),
                "windows": int(inside.sum()),
                "flagged": int((flagged & inside).sum()),
            }
        )

    outside = ~inside_any
    training = times < series.timestamps[series.training_end()]
    return {
        "model": sidecar["model"],
        "runtime": runtime,
        "io": model.io_details(),
        "threshold": threshold,
        "rows_accepted": int(len(series.values)),
        "rows_skipped": series.skipped_rows,
        "windows": int(len(times)),
        "labelled_windows_detected": sum(1 for window in per_window if window["flagged"] > 0),
        "labelled_windows": per_window,
        "flagged_inside": int((flagged & inside_any).sum()),
        "windows_inside": int(inside_any.sum()),
        "flagged_outside": int((flagged & outside).sum()),
        "windows_outside": int(outside.sum()),
        "false_alarm_rate": float((flagged & outside).sum() / outside.sum()),
        "training_part_windows": int(training.sum()),
        "training_part_flagged": int((flagged & training).sum()),
    }


EVALUATORS = {"demo": evaluate_demo, "har": evaluate_har, "nab": evaluate_nab}


def evaluation_windows(name: str, data_dir: Path | None) -> FloatArray:
    """Return the windows that `evaluate` runs for a model, before normalization."""
    if name == "demo":
        return synthetic_windows(DEMO_HELD_OUT_SEEDS)[0]
    data_dir = require_data_dir(data_dir)
    if name == "har":
        return har_windows(data_dir, har_split(data_dir)["held_out"], HAR.hop)[0]
    return sliding_windows(read_nab_series(data_dir).values[:, None], NAB.window, NAB.hop)


def compare_runtimes(models_dir: Path, data_dir: Path | None, name: str) -> dict[str, Any]:
    """Run a model's evaluation windows in tflite-runtime and LiteRT and compare the raw int8 outputs."""
    spec = SPECS[name]
    reference, _ = open_model(models_dir, spec, "tflite-runtime")
    other, _ = open_model(models_dir, spec, "litert")
    windows = evaluation_windows(name, data_dir)
    differing = 0
    max_difference = 0
    for window in windows:
        normalized = reference.normalize(window)
        difference = np.abs(
            reference.invoke(normalized).astype(np.int16)
            - other.invoke(normalized).astype(np.int16)
        )
        differing += int(difference.max() > 0)
        max_difference = max(max_difference, int(difference.max()))
    return {
        "windows": int(len(windows)),
        "windows_differing": differing,
        "max_difference_lsb": max_difference,
    }


def print_classification(title: str, report: dict[str, Any]) -> None:
    print(f"  {title} windows: {report['windows']}, accuracy {report['accuracy']:.4f}")
    for label, recall in report["recall"].items():
        print(f"    recall {label}: " + ("no windows" if recall is None else f"{recall:.4f}"))
    print("    confusion (rows true, columns predicted):", report["confusion"]["labels"])
    for label, row in zip(
        report["confusion"]["labels"],
        report["confusion"]["rows_true_columns_predicted"],
        strict=True,
    ):
        print(f"      {label:>10}: {row}")
    for relative, accuracy in report.get("accuracy_per_file", {}).items():
        print(f"      {relative}: {accuracy:.3f}")


def print_report(name: str, report: dict[str, Any]) -> None:
    print(f"== {name} ({report['model']}, runtime {report['runtime']})")
    for role in ("input", "output"):
        io = report["io"][role]
        print(
            f"  {role}: {io['dtype']} {io['shape']} scale {io['scale']:.9g} zero point {io['zero_point']}"
        )
    if "held_out" in report:
        print_classification("held-out", report["held_out"])
    for stream in report.get("default_streams", []):
        print_classification(f"default stream {stream['stream']}", stream)
    if "labelled_windows" in report:
        print(
            f"  rows accepted {report['rows_accepted']}, skipped {report['rows_skipped']}, windows {report['windows']}"
        )
        print(f"  threshold {report['threshold']:.6g}")
        for window in report["labelled_windows"]:
            print(
                f"    {window['start']} .. {window['end']}: {window['flagged']} of {window['windows']} windows flagged"
            )
        print(
            f"  labelled windows detected: {report['labelled_windows_detected']} of {len(report['labelled_windows'])}"
        )
        print(f"  flagged inside: {report['flagged_inside']} of {report['windows_inside']}")
        print(f"  flagged outside: {report['flagged_outside']} of {report['windows_outside']}")
        print(f"  false-alarm rate: {report['false_alarm_rate']:.4f}")
        print(
            f"  training part: {report['training_part_flagged']} of {report['training_part_windows']} flagged"
        )


# --- Training ----------------------------------------------------------------


def import_tensorflow(seed: int) -> tuple[Any, Any]:
    """Import TensorFlow and Keras, seed them and make their ops deterministic."""
    # oneDNN kernels may sum floats in a CPU-dependent order, which TensorFlow's
    # startup message warns changes results slightly.
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import keras
        import tensorflow as tf
    except ImportError as error:
        raise SystemExit(
            f"training needs TensorFlow ({error}); install tools/requirements-train.txt into a venv "
            "outside the repository, as the docstring of this script shows"
        ) from error

    if tf.config.threading.get_inter_op_parallelism_threads() != 1:
        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.experimental.enable_op_determinism()
    # Clearing the session resets Keras's global state, so a model trains to
    # the same weights whether or not others were trained before it in this process.
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    return tf, keras


def convert_to_int8(
    tf: Any, keras: Any, model: Any, spec: ModelSpec, calibration: FloatArray
) -> bytes:
    """Convert a Keras model to a full-integer TFLite model with int8 input and output.

    `calibration` contains normalized windows. The converter sets every
    tensor's int8 range, the input's included, from the values they produce.
    """
    single = keras.Input(shape=tuple(spec.input_shape[1:]), batch_size=1)
    batch_one = keras.Model(single, model(single))

    def representative_dataset() -> Iterator[list[npt.NDArray[np.float32]]]:
        for window in calibration:
            yield [window.reshape(spec.input_shape).astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(batch_one)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    # The converter prints the SavedModel it exports on stdout.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return bytes(converter.convert())


def write_model(
    models_dir: Path,
    spec: ModelSpec,
    tflite: bytes,
    normalize: dict[str, Any],
    threshold: float | None,
) -> Path:
    """Write the .tflite file and its sidecar, and return the .tflite path."""
    if len(tflite) > MAX_MODEL_BYTES:
        raise SystemExit(
            f"{spec.file_name} is {len(tflite)} bytes, over the {MAX_MODEL_BYTES}-byte limit"
        )
    models_dir.mkdir(parents=True, exist_ok=True)
    model_path = models_dir / spec.file_name
    model_path.write_bytes(tflite)
    sidecar = {
        "model": spec.file_name,
        "kind": spec.kind,
        "labels": spec.labels,
        "window": spec.window,
        "hop": spec.hop,
        "channels": spec.channels,
        "normalize": normalize,
        "threshold": threshold,
        "input_shape": spec.input_shape,
        "sha256": hashlib.sha256(tflite).hexdigest(),
    }
    (models_dir / f"{spec.name}.json").write_text(json.dumps(sidecar, indent=2) + "\n")
    log.info("wrote %s (%d bytes, sha256 %s)", model_path, len(tflite), sidecar["sha256"])
    return model_path


def train_demo(models_dir: Path, data_dir: Path | None) -> None:
    tf, keras = import_tensorflow(SEEDS["demo"])
    windows, labels = synthetic_windows(DEMO_TRAIN_SEEDS)
    log.info("demo: %d training windows, %d of them anomaly", len(windows), int(labels.sum()))

    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input(shape=(DEMO.window, DEMO.channels)),
            layers.Conv1D(16, 3, activation="relu"),
            layers.Conv1D(16, 3, activation="relu"),
            layers.GlobalMaxPooling1D(),
            layers.Dense(16, activation="relu"),
            layers.Dense(len(DEMO.labels), activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(windows, labels, batch_size=128, epochs=20, shuffle=True, verbose=2)

    rng = np.random.default_rng(SEEDS["demo"])
    calibration = windows[rng.choice(len(windows), size=500, replace=False)]
    tflite = convert_to_int8(tf, keras, model, DEMO, calibration)
    write_model(models_dir, DEMO, tflite, DEMO_NORMALIZE, threshold=None)


def random_rotations(rng: np.random.Generator, count: int) -> FloatArray:
    """Return `count` rotation matrices [count, 3, 3] drawn uniformly from SO(3).

    A unit quaternion with Gaussian components is uniform on the 3-sphere,
    so the rotation it encodes is uniform.
    """
    q = rng.normal(size=(count, 4))
    w, x, y, z = (q / np.linalg.norm(q, axis=1, keepdims=True)).T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], axis=1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], axis=1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=1),
        ],
        axis=1,
    )


def train_har(models_dir: Path, data_dir: Path | None) -> None:
    data_dir = require_data_dir(data_dir)
    tf, keras = import_tensorflow(SEEDS["har"])
    split = har_split(data_dir)
    split_path = models_dir / "har_split.json"
    models_dir.mkdir(parents=True, exist_ok=True)
    split_path.write_text(json.dumps(split, indent=2) + "\n")
    log.info(
        "har: %d training files, %d held-out files; wrote %s",
        len(split["train"]),
        len(split["held_out"]),
        split_path,
    )

    windows, labels, _ = har_windows(data_dir, split["train"], HAR_TRAIN_HOP)
    normalized = (windows - HAR_NORMALIZE["mean"]) / HAR_NORMALIZE["std"]
    counts = np.bincount(labels, minlength=len(HAR.labels))
    log.info(
        "har: %d training windows per class %s",
        len(windows),
        dict(zip(HAR.labels, counts.tolist(), strict=True)),
    )
    # Weight each class inversely to its window count, so running (12 training
    # files against 27 and 29) weighs as much in the loss as the others.
    class_weight = {
        index: float(len(labels) / (len(HAR.labels) * count)) for index, count in enumerate(counts)
    }

    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input(shape=(HAR.window, HAR.channels)),
            layers.Conv1D(16, 5, activation="relu"),
            layers.MaxPooling1D(2),
            layers.Conv1D(24, 5, activation="relu"),
            layers.MaxPooling1D(2),
            layers.Conv1D(24, 3, activation="relu"),
            layers.GlobalAveragePooling1D(),
            layers.Dense(len(HAR.labels), activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    # Each epoch rotates every window by a new random rotation, because the
    # sensor is worn on the wrist, in a hand, on an arm or in a pocket and the
    # training files cover only some of the orientations.
    rng = np.random.default_rng(SEEDS["har"])
    for epoch in range(HAR_EPOCHS):
        rotated = np.einsum("nij,ntj->nti", random_rotations(rng, len(normalized)), normalized)
        history = model.fit(
            rotated,
            labels,
            batch_size=64,
            epochs=1,
            shuffle=True,
            class_weight=class_weight,
            verbose=0,
        )
        log.info(
            "har: epoch %d loss %.4f accuracy %.4f",
            epoch + 1,
            history.history["loss"][0],
            history.history["accuracy"][0],
        )

    calibration = normalized[rng.choice(len(normalized), size=500, replace=False)]
    tflite = convert_to_int8(tf, keras, model, HAR, calibration)
    write_model(models_dir, HAR, tflite, HAR_NORMALIZE, threshold=None)


def train_nab(models_dir: Path, data_dir: Path | None) -> None:
    data_dir = require_data_dir(data_dir)
    tf, keras = import_tensorflow(SEEDS["nab"])
    series = read_nab_series(data_dir)
    training_end = series.training_end()
    normalize = nab_normalization(series)
    training_values = (series.values[:training_end] - normalize["mean"]) / normalize["std"]
    # Every training window, at hop 1, is both training data and the threshold's reference.
    windows = sliding_windows(training_values[:, None], NAB.window, 1)[:, :, 0]
    log.info(
        "nab: training part is rows 0..%d (%s .. %s), %d windows, mean %.4f std %.4f",
        training_end - 1,
        series.timestamps[0],
        series.timestamps[training_end - 1],
        len(windows),
        normalize["mean"],
        normalize["std"],
    )

    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input(shape=(NAB.window,)),
            layers.Dense(16, activation="relu"),
            layers.Dense(4, activation="relu"),
            layers.Dense(16, activation="relu"),
            layers.Dense(NAB.window),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    rng = np.random.default_rng(SEEDS["nab"])
    for _ in range(NAB_EPOCHS):
        shifted = windows + rng.uniform(-NAB_LEVEL_SHIFT, NAB_LEVEL_SHIFT, size=(len(windows), 1))
        model.fit(shifted, shifted, batch_size=64, epochs=1, shuffle=True, verbose=0)

    # Calibrate on every 4th training window as is, and on every 40th shifted
    # to 9 levels across the augmentation band.
    offsets = np.linspace(-NAB_LEVEL_SHIFT, NAB_LEVEL_SHIFT, 9)
    calibration = np.concatenate(
        [windows[::4], (windows[::40, None, :] + offsets[:, None]).reshape(-1, NAB.window)]
    )
    tflite = convert_to_int8(tf, keras, model, NAB, calibration)

    # The threshold comes from the int8 model's scores on the training
    # windows, computed with the daemon's contract in TensorFlow's interpreter.
    # The daemon's runtimes can differ from it by a few LSB per output value.
    quantized = QuantizedModel(tflite, "tensorflow", normalize)
    raw_windows = sliding_windows(series.values[:training_end, None], NAB.window, 1)
    scores = np.array([quantized.reconstruction_score(window) for window in raw_windows])
    threshold = round(float(np.percentile(scores, NAB_THRESHOLD_PERCENTILE)), 6)
    log.info(
        "nab: threshold %.6g is the %gth percentile of %d training scores",
        threshold,
        NAB_THRESHOLD_PERCENTILE,
        len(scores),
    )
    write_model(models_dir, NAB, tflite, normalize, threshold)


TRAINERS = {"demo": train_demo, "har": train_har, "nab": train_nab}


# --- Command line ------------------------------------------------------------


def require_data_dir(data_dir: Path | None) -> Path:
    if data_dir is None:
        raise SystemExit(
            "--data-dir is required for the har and nab models; see this script's docstring"
        )
    return data_dir


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train edgeward's bundled int8 TFLite models, or evaluate them as the daemon runs them."
    )
    parser.add_argument(
        "command",
        choices=["train", "evaluate", "compare"],
        help="train: train and write the models. evaluate: report held-out results in one runtime. "
        "compare: count evaluation windows whose raw int8 outputs differ between tflite-runtime and LiteRT.",
    )
    parser.add_argument(
        "model", choices=[*SPECS, "all"], help="Model to train, evaluate or compare."
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="Folder containing st_har/ and nab/ (see this script's docstring). Not needed for the demo model.",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=DEFAULT_MODELS_DIR,
        help="Folder the .tflite files and sidecars are written to and read from (default: %(default)s).",
    )
    parser.add_argument(
        "--runtime",
        choices=["tflite-runtime", "litert"],
        default="tflite-runtime",
        help="Runtime that evaluate uses; compare always uses both (default: %(default)s).",
    )
    parser.add_argument(
        "--seed",
        type=int,
        help="Train with this seed in place of each model's default seed, to measure how results vary "
        "between seeds. The bundled models use the defaults, so pair it with --models-dir.",
    )
    parser.add_argument(
        "--json", type=Path, help="Also write the evaluate or compare results to this JSON file."
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    names = list(SPECS) if args.model == "all" else [args.model]

    if args.command == "train":
        if args.seed is not None:
            SEEDS.update(dict.fromkeys(SEEDS, args.seed))
        for name in names:
            TRAINERS[name](args.models_dir, args.data_dir)
        return 0

    reports = {}
    for name in names:
        if args.command == "compare":
            reports[name] = compare_runtimes(args.models_dir, args.data_dir, name)
            print(f"== {name}: {json.dumps(reports[name])}")
        else:
            reports[name] = EVALUATORS[name](args.models_dir, args.data_dir, args.runtime)
            print_report(name, reports[name])
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

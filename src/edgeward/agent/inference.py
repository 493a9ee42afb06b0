"""Run windows through a TFLite model: quantize, invoke, dequantize, read the label.

One Model owns one interpreter, so each stream thread gets its own Model.
The runtimes release the GIL during invoke(), so streams run in parallel.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeward.agent.runtime import interpreter_class
from edgeward.config.schema import ModelConfig, NormalizeConfig
from edgeward.errors import InferenceError, ModelError, ShapeMismatchError

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Prediction:
    """The output of one window: the raw tensor bytes, the dequantized values and their reading."""

    raw_output: bytes
    # Dequantized output values, flattened.
    outputs: FloatArray
    label: str | None
    score: float
    anomaly: bool


def _short_reason(error: Exception, limit: int = 300) -> str:
    # Runtime messages repeat one sentence per tensor or node; keep the first ones.
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit] + "..."


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


class Model:
    """A loaded model with its tensor details and the stream's way of reading its output."""

    def __init__(
        self,
        config: ModelConfig,
        runtime: str,
        normalize: NormalizeConfig | None = None,
        threads: int = 1,
    ) -> None:
        self.config = config
        self.path = config.path
        self.runtime = runtime
        self.sha256 = self._read_sha256()
        self._interpreter = self._load(threads)

        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self.input_shape = [int(d) for d in self._input["shape"]]
        self.output_shape = [int(d) for d in self._output["shape"]]
        self.input_dtype = np.dtype(self._input["dtype"])
        self.output_dtype = np.dtype(self._output["dtype"])
        self.input_scale, self.input_zero_point = self._input["quantization"]
        self.output_scale, self.output_zero_point = self._output["quantization"]

        normalize = normalize or NormalizeConfig()
        self._mean = np.asarray(normalize.mean, dtype=np.float64)
        self._std = np.asarray(normalize.std, dtype=np.float64)
        self._identity = bool(np.all(self._mean == 0.0) and np.all(self._std == 1.0))
        self.labels = self._check_labels()
        self._check_kind()
        self._warm_up()

    @property
    def input_size(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def output_size(self) -> int:
        return int(np.prod(self.output_shape))

    def check_window(self, size: int, channels: int) -> None:
        """Raise ShapeMismatchError unless a [size, channels] window fills the input tensor."""
        if size * channels == self.input_size:
            return
        hint = ""
        if self.input_size % channels == 0:
            hint = f"; set window.size to {self.input_size // channels}"
        raise ShapeMismatchError(
            f"model {self.path}: a window of shape [{size}, {channels}] ({size * channels} values) "
            f"does not fit the input tensor of shape {self.input_shape} ({self.input_size} values){hint}"
        )

    def predict(self, window: FloatArray) -> Prediction:
        """Run one [size, channels] window and read its output."""
        normalized = window if self._identity else (window - self._mean) / self._std
        tensor = self._to_input_tensor(normalized)
        self._interpreter.set_tensor(self._input["index"], tensor)
        try:
            self._interpreter.invoke()
        except (RuntimeError, ValueError) as error:
            raise InferenceError(f"model {self.path}: invoke failed: {error}") from error
        raw = self._interpreter.get_tensor(self._output["index"])
        outputs = self._dequantize(raw)
        return self._read(outputs, normalized, raw.tobytes())

    def _read_sha256(self) -> str:
        try:
            return file_sha256(self.path)
        except FileNotFoundError as error:
            raise ModelError(f"model {self.path} not found; check model.path") from error
        except (IsADirectoryError, PermissionError, OSError) as error:
            raise ModelError(
                f"model {self.path} could not be read: {error.strerror or error}"
            ) from error

    def _load(self, threads: int) -> Any:
        interpreter_type = interpreter_class(self.runtime)
        try:
            interpreter = interpreter_type(model_path=str(self.path), num_threads=threads)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as error:
            reason = _short_reason(error)
            raise ModelError(
                f"model {self.path} was rejected by {self.runtime}: {reason}"
            ) from error
        return interpreter

    def _check_labels(self) -> list[str]:
        labels = list(self.config.labels)
        if self.config.kind != "classifier":
            return labels
        if not labels:
            return [f"class_{i}" for i in range(self.output_size)]
        if len(labels) != self.output_size:
            raise ModelError(
                f"model {self.path}: {len(labels)} labels are configured but the output tensor "
                f"{self.output_shape} has {self.output_size} values; list one label per output value"
            )
        return labels

    def _check_kind(self) -> None:
        if self.config.kind == "autoencoder" and self.output_size != self.input_size:
            raise ModelError(
                f"model {self.path}: kind 'autoencoder' needs an output of the input's size, "
                f"but the input is {self.input_shape} and the output is {self.output_shape}"
            )
        if (
            self.input_dtype.kind in "iu"
            and self.input_scale == 0
            and self.config.input == "quantize"
        ):
            raise ModelError(
                f"model {self.path}: the {self.input_dtype} input tensor has no quantization "
                "parameters; set model.input to 'raw' and feed values in the tensor's range"
            )

    def _warm_up(self) -> None:
        # One invoke at load time, so a model that loads but cannot run (an
        # unresolved custom op, say) fails before the daemon starts.
        zeros = np.zeros(self.input_shape, dtype=self.input_dtype)
        self._interpreter.set_tensor(self._input["index"], zeros)
        try:
            self._interpreter.invoke()
        except (RuntimeError, ValueError) as error:
            reason = _short_reason(error)
            raise ModelError(
                f"model {self.path} failed its first invoke in {self.runtime}: {reason}"
            ) from error

    def _to_input_tensor(self, normalized: FloatArray) -> npt.NDArray[Any]:
        dtype = self.input_dtype
        if dtype.kind == "f":
            tensor: npt.NDArray[Any] = normalized.astype(dtype).reshape(self.input_shape)
            return tensor

        info = np.iinfo(dtype)
        if self.config.input == "raw":
            if normalized.min() < info.min or normalized.max() > info.max:
                raise InferenceError(
                    f"model {self.path}: raw input values must lie in [{info.min}, {info.max}] for {dtype}"
                )
            return np.rint(normalized).astype(dtype).reshape(self.input_shape)

        quantized = np.rint(normalized / self.input_scale) + self.input_zero_point
        clipped: npt.NDArray[Any] = np.clip(quantized, info.min, info.max)
        return clipped.astype(dtype).reshape(self.input_shape)

    def _dequantize(self, raw: npt.NDArray[Any]) -> FloatArray:
        values: FloatArray = raw.astype(np.float64)
        if raw.dtype.kind in "iu" and self.output_scale != 0:
            values = (values - self.output_zero_point) * self.output_scale
        return values

    def _read(self, outputs: FloatArray, normalized: FloatArray, raw: bytes) -> Prediction:
        flat = outputs.reshape(-1)
        kind = self.config.kind
        threshold = self.config.threshold
        label: str | None = None

        if kind == "classifier":
            best = int(np.argmax(flat))
            label = self.labels[best]
            score = float(flat[best])
            anomaly = label in self.config.anomaly_labels
        elif kind == "autoencoder":
            score = float(np.mean((flat - normalized.reshape(-1)) ** 2))
            anomaly = threshold is not None and score > threshold
        else:
            score = float(flat[0])
            anomaly = threshold is not None and score > threshold

        return Prediction(raw, flat, label, score, anomaly)

"""Deterministic synthetic sensor signal with injected anomalies.

The signal is the embedded default source and the training data of the demo
model, so the same seed always gives the same samples, whatever block sizes
the caller reads in.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

# Samples are generated in fixed blocks so the random stream does not depend
# on how many samples a caller asks for at a time.
BLOCK_SAMPLES = 1024


class SyntheticSignal:
    """A multi-axis signal: one sine per axis, Gaussian noise, and anomaly bursts.

    An anomaly burst lasts 8 to 24 samples and is either a spike (a large
    offset on one axis) or a vibration (a fast oscillation on every axis).
    """

    def __init__(
        self,
        seed: int,
        channels: int = 3,
        rate_hz: float = 50.0,
        anomaly_rate: float = 0.002,
        noise: float = 0.05,
    ) -> None:
        self._rng = np.random.default_rng(seed)
        self.channels = channels
        self.rate_hz = rate_hz
        self.anomaly_rate = anomaly_rate
        self.noise = noise

        self._frequencies = self._rng.uniform(0.2, 1.5, size=channels)
        self._phases = self._rng.uniform(0.0, 2 * np.pi, size=channels)
        self._amplitudes = self._rng.uniform(0.5, 1.0, size=channels)

        self._index = 0
        self._burst_left = 0
        self._burst_kind = 0
        self._burst_axis = 0
        self._pending_values = np.empty((0, channels), dtype=np.float64)
        self._pending_flags = np.empty(0, dtype=bool)

    def read(self, count: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        """Return the next `count` samples as (values[count, channels], anomaly flags[count])."""
        while len(self._pending_flags) < count:
            values, flags = self._next_block()
            self._pending_values = np.concatenate([self._pending_values, values])
            self._pending_flags = np.concatenate([self._pending_flags, flags])

        values = self._pending_values[:count]
        flags = self._pending_flags[:count]
        self._pending_values = self._pending_values[count:]
        self._pending_flags = self._pending_flags[count:]
        return values, flags

    def _next_block(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        n = BLOCK_SAMPLES
        t = (self._index + np.arange(n)) / self.rate_hz
        self._index += n

        values = self._amplitudes * np.sin(
            2 * np.pi * self._frequencies * t[:, None] + self._phases
        )
        values += self._rng.normal(0.0, self.noise, size=(n, self.channels))

        starts = self._rng.random(n) < self.anomaly_rate
        kinds = self._rng.integers(0, 2, size=n)
        axes = self._rng.integers(0, self.channels, size=n)
        lengths = self._rng.integers(8, 25, size=n)
        flags = np.zeros(n, dtype=bool)

        for i in range(n):
            if self._burst_left == 0 and starts[i]:
                self._burst_left = int(lengths[i])
                self._burst_kind = int(kinds[i])
                self._burst_axis = int(axes[i])
            if self._burst_left > 0:
                flags[i] = True
                self._burst_left -= 1
                if self._burst_kind == 0:
                    values[i, self._burst_axis] += 2.5
                else:
                    values[i] += 0.8 * np.sin(np.pi * 0.9 * (self._index - n + i))

        return values, flags

"""Cut a stream of samples into overlapping windows of `size` samples every `hop` samples."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


class Windower:
    """Collect samples and return each full window with the timestamp of its last sample."""

    def __init__(self, size: int, hop: int, channels: int) -> None:
        self.size = size
        self.hop = hop
        self.channels = channels
        self._values = np.empty((0, channels), dtype=np.float64)
        self._times = np.empty(0, dtype=np.float64)
        # Samples still to drop when hop is larger than size.
        self._skip = 0

    def reset(self) -> None:
        """Drop a partial window, so no window spans two files or a restart."""
        self._values = self._values[:0]
        self._times = self._times[:0]
        self._skip = 0

    def push(self, times: FloatArray, values: FloatArray) -> list[tuple[float, FloatArray]]:
        """Add samples; return the windows they complete, oldest first."""
        if self._skip:
            dropped = min(self._skip, len(times))
            self._skip -= dropped
            times = times[dropped:]
            values = values[dropped:]
        if len(times) == 0:
            return []
        self._values = np.concatenate([self._values, values])
        self._times = np.concatenate([self._times, times])

        windows = []
        start = 0
        while len(self._times) - start >= self.size:
            end = start + self.size
            # A view is safe: the buffer is only ever replaced, never written in place.
            windows.append((float(self._times[end - 1]), self._values[start:end]))
            start += self.hop

        if start:
            self._skip = max(0, start - len(self._times))
            self._values = self._values[start:]
            self._times = self._times[start:]
        return windows

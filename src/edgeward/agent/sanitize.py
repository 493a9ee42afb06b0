"""Bad sensor input: count it, then skip or fill it as the stream's config sets.

Nothing here raises: a bad sample never stops a stream.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edgeward.config.schema import BadInputConfig
from edgeward.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)


@dataclass
class InputCounters:
    """Per-stream counts of bad input, shown in the status."""

    samples: int = 0
    malformed_lines: int = 0
    missing_values: int = 0
    nonfinite_values: int = 0
    time_regressions: int = 0
    skipped_samples: int = 0
    filled_samples: int = 0
    windows: int = 0
    anomalies: int = 0
    inference_errors: int = 0
    # Windows and summaries not stored because a consent purpose is not granted.
    withheld_no_consent: int = 0


class SampleFilter:
    """Apply the stream's bad-input policy to one sample at a time."""

    def __init__(self, stream: str, policy: BadInputConfig, channels: int) -> None:
        self.stream = stream
        self.policy = policy
        self.channels = channels
        self.counters = InputCounters()
        self._log = RateLimitedLog(log, policy.log_interval)
        self._last_time: float | None = None
        self._previous: list[float] | None = None

    def reset_time(self) -> None:
        """Forget the last timestamp, for a new file or a restarted replay."""
        self._last_time = None

    def malformed(self, where: str, reason: str) -> None:
        self.counters.malformed_lines += 1
        self.counters.skipped_samples += 1
        self._log.warning(
            "malformed", "stream %s: skipped malformed input at %s: %s", self.stream, where, reason
        )

    def accept(
        self, timestamp: float, values: list[float | None], where: str
    ) -> list[float] | None:
        """Return the cleaned values, or None when the sample is skipped."""
        self.counters.samples += 1

        if self._last_time is not None and timestamp <= self._last_time:
            self.counters.time_regressions += 1
            self._log.warning(
                "time",
                "stream %s: timestamp %.3f at %s is not after the previous %.3f (policy: %s)",
                self.stream,
                timestamp,
                where,
                self._last_time,
                self.policy.time_regression,
            )
            if self.policy.time_regression == "skip":
                self.counters.skipped_samples += 1
                return None

        cleaned = self._clean_values(values, where)
        if cleaned is None:
            self.counters.skipped_samples += 1
            return None

        if self._last_time is None or timestamp > self._last_time:
            self._last_time = timestamp
        self._previous = cleaned
        return cleaned

    def accept_block(
        self, times: npt.NDArray[np.float64] | None, values: npt.NDArray[np.float64]
    ) -> bool:
        """Accept a whole block when it needs no policy: finite values, increasing timestamps.

        Returns False, counting nothing, when any sample needs the per-sample path.
        """
        if not np.isfinite(values).all():
            return False
        if times is not None:
            if not np.isfinite(times).all():
                return False
            if len(times) > 1 and not (np.diff(times) > 0).all():
                return False
            if self._last_time is not None and times[0] <= self._last_time:
                return False
            self._last_time = float(times[-1])
        self.counters.samples += len(values)
        self._previous = values[-1].tolist()
        return True

    def _clean_values(self, values: list[float | None], where: str) -> list[float] | None:
        try:
            # One sum finds the common case, all values finite, without a loop.
            if math.isfinite(sum(values)):  # type: ignore[arg-type]
                return values  # type: ignore[return-value]
        except TypeError:
            pass
        bad = [i for i, v in enumerate(values) if v is None or not math.isfinite(v)]
        if not bad:
            return values  # type: ignore[return-value]

        missing = sum(1 for i in bad if values[i] is None)
        self.counters.missing_values += missing
        self.counters.nonfinite_values += len(bad) - missing
        self._log.warning(
            "missing",
            "stream %s: missing, NaN or infinite value at %s (policy: %s)",
            self.stream,
            where,
            self.policy.missing,
        )

        if self.policy.missing == "skip":
            return None
        if self.policy.missing == "fill_previous" and self._previous is None:
            return None

        filled = list(values)
        for i in bad:
            filled[i] = 0.0 if self.policy.missing == "fill_zero" else self._previous[i]  # type: ignore[index]
        self.counters.filled_samples += 1
        return filled  # type: ignore[return-value]

"""Summaries of results per stream per interval: label counts, mean and max score, anomalies.

Intervals are aligned to multiples of the interval length in the stream's
own time (the timestamp of each window's last sample), so a replay at any
speed gives the same summaries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Summary:
    """One interval's summary of one stream."""

    stream: str
    period_start: float
    period_end: float
    windows: int = 0
    label_counts: dict[str, int] = field(default_factory=dict)
    score_sum: float = 0.0
    max_score: float = -math.inf
    anomalies: int = 0

    @property
    def mean_score(self) -> float:
        return self.score_sum / self.windows if self.windows else 0.0


class SummaryAggregator:
    """Add results one by one; get each interval's summary once a later result closes it."""

    def __init__(self, stream: str, interval: float) -> None:
        self.stream = stream
        self.interval = interval
        self._current: Summary | None = None

    def add(self, ts: float, label: str | None, score: float, anomaly: bool) -> Summary | None:
        """Count one result; return the previous interval's summary when this result starts a new one."""
        closed = None
        current = self._current
        if current is not None and not current.period_start <= ts < current.period_end:
            closed = current
            current = None
        if current is None:
            start = math.floor(ts / self.interval) * self.interval
            current = Summary(self.stream, start, start + self.interval)
            self._current = current

        current.windows += 1
        if label is not None:
            current.label_counts[label] = current.label_counts.get(label, 0) + 1
        current.score_sum += score
        current.max_score = max(current.max_score, score)
        current.anomalies += int(anomaly)
        return closed

    def flush(self) -> Summary | None:
        """Return the open interval's summary, if any, at the end of a stream or at shutdown."""
        closed, self._current = self._current, None
        return closed

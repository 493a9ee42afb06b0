"""Sensor sources: each yields chunks of (timestamps, values) or a segment break.

A source never raises for bad input: it reports malformed lines and bad
values to the stream's SampleFilter and goes on. Sources check `stop`
between chunks, so a source paced in real time stops within a chunk's time.
The replay source is in `replay.py`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from edgeward.agent.sanitize import SampleFilter
from edgeward.agent.synthetic import SyntheticSignal
from edgeward.config.schema import SourceConfig, SyntheticSourceConfig

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
CHUNK_SAMPLES = 256


class SegmentBreak:
    """Marks the start of a new file: windows must not span it."""


Chunk = tuple[FloatArray, FloatArray] | SegmentBreak
SEGMENT_BREAK = SegmentBreak()


def source_channels(config: SourceConfig) -> int:
    """Return how many values each sample of this source has."""
    if isinstance(config, SyntheticSourceConfig):
        return config.channels
    return len(config.columns)


class SyntheticSource:
    """The seeded synthetic signal, paced in real time or as fast as possible."""

    def __init__(self, config: SyntheticSourceConfig, sample_filter: SampleFilter) -> None:
        self.config = config
        self.filter = sample_filter

    def chunks(self, stop: threading.Event) -> Iterator[Chunk]:
        config = self.config
        signal = SyntheticSignal(config.seed, config.channels, config.rate_hz, config.anomaly_rate)
        realtime = config.playback == "realtime"
        chunk = max(1, int(config.rate_hz / 10)) if realtime else CHUNK_SAMPLES
        start = time.time()
        produced = 0

        while not stop.is_set():
            count = chunk
            if config.samples is not None:
                count = min(chunk, config.samples - produced)
                if count <= 0:
                    return
            values, _ = signal.read(count)
            times = start + (produced + np.arange(count)) / config.rate_hz
            produced += count
            self.filter.counters.samples += count

            if realtime:
                delay = times[-1] - time.time()
                if delay > 0 and stop.wait(delay):
                    return
            yield times, values

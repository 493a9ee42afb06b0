"""Sensor sources: each yields chunks of (timestamps, values) or a segment break.

A source never raises for bad input: it reports malformed lines and bad
values to the stream's SampleFilter and goes on. Sources check `stop`
between chunks, so a replay at recorded speed stops within a chunk's time.
"""

from __future__ import annotations

import csv
import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeward.agent.sanitize import SampleFilter
from edgeward.agent.synthetic import SyntheticSignal
from edgeward.config.schema import ReplaySourceConfig, SourceConfig, SyntheticSourceConfig

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


class ReplaySource:
    """Replay CSV or JSON Lines files, in the configured order, as one stream."""

    def __init__(self, config: ReplaySourceConfig, sample_filter: SampleFilter) -> None:
        self.config = config
        self.filter = sample_filter

    def chunks(self, stop: threading.Event) -> Iterator[Chunk]:
        while True:
            for path in self.config.path:
                if stop.is_set():
                    return
                yield SEGMENT_BREAK
                self.filter.reset_time()
                yield from self._replay_file(path, stop)
            if not self.config.loop or stop.is_set():
                return

    def _replay_file(self, path: Path, stop: threading.Event) -> Iterator[Chunk]:
        times: list[float] = []
        rows: list[list[float]] = []
        pacer = _Pacer(self.config) if self.config.playback == "realtime" else None
        synthetic_time = time.time()
        index = 0

        try:
            # utf-8-sig drops the byte order mark that spreadsheet exports start with.
            file = path.open(encoding="utf-8-sig", errors="replace", newline="")
        except OSError as error:
            log.error(
                "stream %s: cannot open %s: %s; skipping the file", self.filter.stream, path, error
            )
            return

        with file:
            for where, record in self._records(file, path):
                if isinstance(record, str):
                    self.filter.malformed(where, record)
                    continue
                timestamp, values, problem = record
                if problem:
                    self.filter.malformed(where, problem)
                    continue
                if timestamp is None:
                    timestamp = synthetic_time + index / self.config.rate_hz
                index += 1

                cleaned = self.filter.accept(timestamp, values, where)
                if cleaned is None:
                    continue
                times.append(timestamp)
                rows.append(cleaned)

                # At recorded speed every sample is handed over when it is due.
                if len(rows) >= CHUNK_SAMPLES or pacer is not None:
                    if pacer and pacer.wait(times[-1], stop):
                        return
                    yield np.asarray(times), np.asarray(rows, dtype=np.float64)
                    times, rows = [], []
                    if stop.is_set():
                        return

        if rows:
            yield np.asarray(times), np.asarray(rows, dtype=np.float64)

    def _records(self, file: Any, path: Path) -> Iterator[tuple[str, Any]]:
        if self.config.type == "jsonl":
            yield from self._jsonl_records(file, path)
        else:
            yield from self._csv_records(file, path)

    def _csv_records(self, file: Any, path: Path) -> Iterator[tuple[str, Any]]:
        # QUOTE_NONE keeps a stray quote from joining the following lines into
        # one field; quotes around a cell are stripped instead.
        reader = csv.reader(
            file, delimiter=self.config.delimiter, skipinitialspace=True, quoting=csv.QUOTE_NONE
        )
        value_index: list[int] = []
        time_index: int | None = None
        columns = self.config.columns

        if self.config.header:
            header = next(reader, None)
            if header is None:
                return
            header = [unquote(name) for name in header]
            try:
                value_index = [_column_index(c, header) for c in columns]
                if self.config.time_column is not None:
                    time_index = _column_index(self.config.time_column, header)
            except ValueError as error:
                log.error("stream %s: %s in %s; skipping the file", self.filter.stream, error, path)
                return
        else:
            value_index = [int(c) for c in columns]
            if self.config.time_column is not None:
                time_index = int(self.config.time_column)

        needed = max([*value_index, time_index if time_index is not None else 0]) + 1
        for row in reader:
            where = f"{path.name}:{reader.line_num}"
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) < needed:
                yield where, f"expected at least {needed} columns, found {len(row)}"
                continue
            values = [_parse_number(row[i]) for i in value_index]
            raw_time = unquote(row[time_index]) if time_index is not None else None
            yield where, self._with_time(raw_time, values)

    def _jsonl_records(self, file: Any, path: Path) -> Iterator[tuple[str, Any]]:
        for line_number, line in enumerate(file, start=1):
            where = f"{path.name}:{line_number}"
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                yield where, f"invalid JSON ({error.msg})"
                continue
            if not isinstance(record, dict):
                yield where, "expected a JSON object"
                continue
            absent = [str(c) for c in self.config.columns if str(c) not in record]
            if absent:
                keys = ", ".join(sorted(record)) or "none"
                yield (
                    where,
                    f"key {absent[0]!r} is not in the record (its keys: {keys}); check columns",
                )
                continue
            values = [_number_or_none(record.get(str(c))) for c in self.config.columns]
            column = self.config.time_column
            raw_time = record.get(str(column)) if column is not None else None
            yield where, self._with_time(raw_time, values)

    def _with_time(
        self, raw_time: Any, values: list[float | None]
    ) -> tuple[float | None, list[float | None], str | None]:
        if self.config.time_column is None:
            return None, values, None
        try:
            return parse_time(raw_time, self.config.time_format), values, None
        except (TypeError, ValueError):
            expected = (
                f"time_format {self.config.time_format!r}"
                if self.config.time_format
                else "epoch seconds (set time_format for other forms)"
            )
            return None, values, f"invalid timestamp {raw_time!r}, expected {expected}"


class _Pacer:
    """Sleep so that samples come out at their recorded spacing divided by `speed`."""

    def __init__(self, config: ReplaySourceConfig) -> None:
        self.speed = config.speed
        self.first_data_time: float | None = None
        self.first_wall_time = 0.0

    def wait(self, data_time: float, stop: threading.Event) -> bool:
        """Wait until `data_time` is due; return True when stop was set meanwhile."""
        if self.first_data_time is None:
            self.first_data_time = data_time
            self.first_wall_time = time.monotonic()
            return stop.is_set()
        due = self.first_wall_time + (data_time - self.first_data_time) / self.speed
        delay = due - time.monotonic()
        return stop.wait(delay) if delay > 0 else stop.is_set()


def _column_index(column: str | int, header: list[str]) -> int:
    if isinstance(column, int):
        return column
    try:
        return header.index(column)
    except ValueError:
        raise ValueError(f"column {column!r} is not in the header {header}") from None


def unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1].strip()
    return text


def _parse_number(text: str) -> float | None:
    text = unquote(text)
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _number_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return _parse_number(value)
    return None


def parse_time(raw: Any, time_format: str | None) -> float:
    if time_format is None:
        if isinstance(raw, bool):
            raise TypeError("a boolean is not a timestamp")
        return float(raw)
    parsed = datetime.strptime(str(raw).strip(), time_format)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def open_source(
    config: SourceConfig, sample_filter: SampleFilter
) -> SyntheticSource | ReplaySource:
    if isinstance(config, SyntheticSourceConfig):
        return SyntheticSource(config, sample_filter)
    return ReplaySource(config, sample_filter)

"""Replay CSV or JSON Lines files as a sensor stream.

A CSV file replayed as fast as possible is parsed a block of rows at a time
into NumPy arrays. A block whose values are all finite and whose timestamps
increase is handed over whole; any other block, and every file replayed at
recorded speed or with a time_format, goes through the per-row path, which
counts and logs each bad row. Both paths give the same samples.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeward.agent.sanitize import SampleFilter
from edgeward.agent.sources import CHUNK_SAMPLES, SEGMENT_BREAK, Chunk
from edgeward.config.schema import ReplaySourceConfig

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
# One parsed row: (timestamp or None, values, problem), or a malformed-line reason.
Record = tuple[float | None, list[float | None], str | None] | str


@dataclass(frozen=True)
class _CsvLayout:
    """The column indexes of a file's values and timestamp."""

    value_index: list[int]
    time_index: int | None

    @property
    def needed(self) -> int:
        return max([*self.value_index, self.time_index if self.time_index is not None else 0]) + 1


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
        try:
            # utf-8-sig drops the byte order mark that spreadsheet exports start with.
            file = path.open(encoding="utf-8-sig", errors="replace", newline="")
        except OSError as error:
            log.error(
                "stream %s: cannot open %s: %s; skipping the file", self.filter.stream, path, error
            )
            return

        with file:
            if self.config.type == "jsonl":
                blocks = self._jsonl_blocks(file, path)
            else:
                blocks = self._csv_blocks(file, path)
            yield from self._samples(blocks, stop)

    def _samples(self, blocks: Iterator[Any], stop: threading.Event) -> Iterator[Chunk]:
        config = self.config
        pacer = _Pacer(config.speed) if config.playback == "realtime" else None
        synthetic_time = time.time()
        index = 0

        for block in blocks:
            if isinstance(block, tuple):
                times, values = block
                if times is None:
                    times = synthetic_time + (index + np.arange(len(values))) / config.rate_hz
                index += len(values)
                yield times, values
                if stop.is_set():
                    return
                continue

            times_list: list[float] = []
            rows: list[list[float]] = []
            for where, record in block:
                sample = self._accept(where, record, synthetic_time, index)
                if not isinstance(record, str):
                    index += 1
                if sample is None:
                    continue
                if pacer is not None:
                    # At recorded speed every sample is handed over when it is due.
                    if pacer.wait(sample[0], stop):
                        return
                    yield np.asarray([sample[0]]), np.asarray([sample[1]], dtype=np.float64)
                    continue
                times_list.append(sample[0])
                rows.append(sample[1])
            if rows:
                yield np.asarray(times_list), np.asarray(rows, dtype=np.float64)
            if stop.is_set():
                return

    def _accept(
        self, where: str, record: Record, synthetic_time: float, index: int
    ) -> tuple[float, list[float]] | None:
        if isinstance(record, str):
            self.filter.malformed(where, record)
            return None
        timestamp, values, problem = record
        if problem:
            self.filter.malformed(where, problem)
            return None
        if timestamp is None:
            timestamp = synthetic_time + index / self.config.rate_hz
        cleaned = self.filter.accept(timestamp, values, where)
        return None if cleaned is None else (timestamp, cleaned)

    def _csv_blocks(self, file: Any, path: Path) -> Iterator[Any]:
        # QUOTE_NONE keeps a stray quote from joining the following lines into
        # one field; quotes around a cell are stripped instead.
        reader = csv.reader(
            file, delimiter=self.config.delimiter, skipinitialspace=True, quoting=csv.QUOTE_NONE
        )
        layout = self._csv_layout(reader, path)
        if layout is None:
            return
        fast = self.config.playback == "fast" and self.config.time_format is None
        name = path.name

        while True:
            rows = list(itertools.islice(reader, CHUNK_SAMPLES))
            if not rows:
                return
            first_line = reader.line_num - len(rows) + 1
            if fast:
                parsed = self._parse_block(rows, layout)
                if parsed is not None:
                    yield parsed
                    continue
            yield [
                (f"{name}:{first_line + offset}", self._csv_record(row, layout))
                for offset, row in enumerate(rows)
                if row and any(cell.strip() for cell in row)
            ]

    def _csv_layout(self, reader: Any, path: Path) -> _CsvLayout | None:
        columns = self.config.columns
        time_column = self.config.time_column
        if not self.config.header:
            time_index = int(time_column) if time_column is not None else None
            return _CsvLayout([int(c) for c in columns], time_index)

        header = next(reader, None)
        if header is None:
            return None
        header = [unquote(name) for name in header]
        try:
            value_index = [_column_index(c, header) for c in columns]
            time_index = _column_index(time_column, header) if time_column is not None else None
        except ValueError as error:
            log.error("stream %s: %s in %s; skipping the file", self.filter.stream, error, path)
            return None
        return _CsvLayout(value_index, time_index)

    def _parse_block(
        self, rows: list[list[str]], layout: _CsvLayout
    ) -> tuple[FloatArray | None, FloatArray] | None:
        """Parse clean rows in one step; None sends the block through the per-row path."""
        columns = (
            layout.value_index
            if layout.time_index is None
            else [layout.time_index, *layout.value_index]
        )
        try:
            data = np.array([[row[i] for i in columns] for row in rows], dtype=np.float64)
        except (IndexError, ValueError):
            return None
        if layout.time_index is None:
            times, values = None, data
        else:
            times, values = data[:, 0], data[:, 1:]
        if not self.filter.accept_block(times, values):
            return None
        return times, values

    def _csv_record(self, row: list[str], layout: _CsvLayout) -> Record:
        if len(row) < layout.needed:
            return f"expected at least {layout.needed} columns, found {len(row)}"
        values = [_parse_number(row[i]) for i in layout.value_index]
        raw_time = unquote(row[layout.time_index]) if layout.time_index is not None else None
        return self._with_time(raw_time, values)

    def _jsonl_blocks(self, file: Any, path: Path) -> Iterator[list[tuple[str, Record]]]:
        name = path.name
        first_line = 1
        while True:
            lines = list(itertools.islice(file, CHUNK_SAMPLES))
            if not lines:
                return
            yield [
                (f"{name}:{line_number}", self._jsonl_record(line))
                for line_number, line in enumerate(lines, start=first_line)
                if line.strip()
            ]
            first_line += len(lines)

    def _jsonl_record(self, line: str) -> Record:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            return f"invalid JSON ({error.msg})"
        if not isinstance(record, dict):
            return "expected a JSON object"
        absent = [str(c) for c in self.config.columns if str(c) not in record]
        if absent:
            keys = ", ".join(sorted(record)) or "none"
            return f"key {absent[0]!r} is not in the record (its keys: {keys}); check columns"
        values = [_number_or_none(record.get(str(c))) for c in self.config.columns]
        column = self.config.time_column
        raw_time = record.get(str(column)) if column is not None else None
        return self._with_time(raw_time, values)

    def _with_time(self, raw_time: Any, values: list[float | None]) -> Record:
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
            return f"invalid timestamp {raw_time!r}, expected {expected}"


class _Pacer:
    """Sleep so that samples come out at their recorded spacing divided by `speed`."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
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
    """Strip whitespace and one pair of surrounding quotes from a CSV cell."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1].strip()
    return text


def _parse_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return float(unquote(text))
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
    """Turn a time cell into epoch seconds: a number, or a string in `time_format` (UTC when naive)."""
    if time_format is None:
        if isinstance(raw, bool):
            raise TypeError("a boolean is not a timestamp")
        return float(raw)
    parsed = datetime.strptime(str(raw).strip(), time_format)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()

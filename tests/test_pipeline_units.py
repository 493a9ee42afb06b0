"""Pure pipeline parts: windows, the bad-input filter, summaries, replay parsing, time parsing."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from edgeward.agent.replay import ReplaySource
from edgeward.agent.sanitize import SampleFilter
from edgeward.agent.sources import SegmentBreak
from edgeward.agent.summaries import SummaryAggregator
from edgeward.agent.synthetic import SyntheticSignal
from edgeward.agent.timeparse import parse_since
from edgeward.agent.windowing import Windower
from edgeward.config.schema import BadInputConfig, ReplaySourceConfig


def test_windower_overlapping_hop() -> None:
    windower = Windower(size=4, hop=2, channels=1)
    values = np.arange(10, dtype=np.float64).reshape(-1, 1)
    windows = windower.push(np.arange(10.0), values)
    assert [ts for ts, _ in windows] == [3.0, 5.0, 7.0, 9.0]
    assert windows[1][1].ravel().tolist() == [2.0, 3.0, 4.0, 5.0]


def test_windower_same_across_chunk_sizes() -> None:
    values = np.random.default_rng(0).normal(size=(100, 2))
    times = np.arange(100.0)
    whole = Windower(8, 3, 2).push(times, values)
    split = Windower(8, 3, 2)
    pieces = []
    for start in range(0, 100, 7):
        pieces += split.push(times[start : start + 7], values[start : start + 7])
    assert [ts for ts, _ in pieces] == [ts for ts, _ in whole]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(pieces, whole, strict=True))


def test_windower_hop_larger_than_size() -> None:
    windower = Windower(size=2, hop=5, channels=1)
    windows = []
    for i in range(12):
        windows += windower.push(np.array([float(i)]), np.array([[float(i)]]))
    assert [ts for ts, _ in windows] == [1.0, 6.0, 11.0]


def test_windower_reset_drops_partial_window() -> None:
    windower = Windower(size=3, hop=3, channels=1)
    windower.push(np.arange(2.0), np.zeros((2, 1)))
    windower.reset()
    assert windower.push(np.arange(2.0, 4.0), np.zeros((2, 1))) == []


def test_filter_skips_nan_and_counts() -> None:
    sample_filter = SampleFilter("s", BadInputConfig(missing="skip"), 2)
    assert sample_filter.accept(1.0, [1.0, float("nan")], "f:1") is None
    assert sample_filter.accept(2.0, [1.0, None], "f:2") is None
    assert sample_filter.accept(3.0, [1.0, float("inf")], "f:3") is None
    assert sample_filter.counters.nonfinite_values == 2
    assert sample_filter.counters.missing_values == 1
    assert sample_filter.counters.skipped_samples == 3


def test_filter_fills_previous_values() -> None:
    sample_filter = SampleFilter("s", BadInputConfig(missing="fill_previous"), 2)
    assert sample_filter.accept(1.0, [1.0, None], "f:1") is None
    assert sample_filter.accept(2.0, [1.0, 2.0], "f:2") == [1.0, 2.0]
    assert sample_filter.accept(3.0, [5.0, float("nan")], "f:3") == [5.0, 2.0]
    assert sample_filter.counters.filled_samples == 1


def test_filter_fills_zero() -> None:
    sample_filter = SampleFilter("s", BadInputConfig(missing="fill_zero"), 2)
    assert sample_filter.accept(1.0, [None, 3.0], "f:1") == [0.0, 3.0]


def test_filter_skips_repeated_and_backward_time() -> None:
    sample_filter = SampleFilter("s", BadInputConfig(), 1)
    assert sample_filter.accept(10.0, [1.0], "f:1") == [1.0]
    assert sample_filter.accept(10.0, [1.0], "f:2") is None
    assert sample_filter.accept(9.0, [1.0], "f:3") is None
    assert sample_filter.accept(11.0, [1.0], "f:4") == [1.0]
    assert sample_filter.counters.time_regressions == 2


def test_filter_keeps_backward_time_when_configured() -> None:
    sample_filter = SampleFilter("s", BadInputConfig(time_regression="keep"), 1)
    sample_filter.accept(10.0, [1.0], "f:1")
    assert sample_filter.accept(9.0, [2.0], "f:2") == [2.0]
    assert sample_filter.counters.time_regressions == 1


def test_filter_logs_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    sample_filter = SampleFilter("s", BadInputConfig(log_interval=3600), 1)
    for i in range(100):
        sample_filter.accept(float(i), [None], f"f:{i}")
    assert len([r for r in caplog.records if "missing" in r.getMessage()]) == 1


def test_aggregator_closes_interval_on_later_result() -> None:
    aggregator = SummaryAggregator("s", interval=10.0)
    assert aggregator.add(1.0, "a", 0.5, False) is None
    assert aggregator.add(9.0, "b", 0.9, True) is None
    closed = aggregator.add(12.0, "a", 0.1, False)
    assert closed is not None
    assert (closed.period_start, closed.period_end) == (0.0, 10.0)
    assert closed.label_counts == {"a": 1, "b": 1}
    assert closed.mean_score == pytest.approx(0.7)
    assert closed.max_score == 0.9
    assert closed.anomalies == 1
    flushed = aggregator.flush()
    assert flushed is not None and flushed.windows == 1


def replay(
    tmp_path: Path, text: str, **options: object
) -> tuple[list[float], list[list[float]], SampleFilter]:
    path = tmp_path / "input.csv"
    path.write_text(text)
    config = ReplaySourceConfig(path=[path], **options)  # type: ignore[arg-type]
    sample_filter = SampleFilter("s", BadInputConfig(), len(config.columns))
    times: list[float] = []
    rows: list[list[float]] = []
    for chunk in ReplaySource(config, sample_filter).chunks(threading.Event()):
        if isinstance(chunk, SegmentBreak):
            continue
        times += chunk[0].tolist()
        rows += chunk[1].tolist()
    return times, rows, sample_filter


def test_replay_survives_bad_lines(tmp_path: Path) -> None:
    text = "t,x,y\n1,1.0,2.0\n2,abc,2.0\n3\n4,nan,1\nnot-a-time,1,1\n5,inf,1\n6,3.0,4.0\n6,3.0,4.0\n5,1,1\n7,5,6\n"
    times, rows, sample_filter = replay(tmp_path, text, columns=["x", "y"], time_column="t")
    assert times == [1.0, 6.0, 7.0]
    assert rows == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    counters = sample_filter.counters
    assert counters.malformed_lines == 2
    assert counters.missing_values == 1
    assert counters.nonfinite_values == 2
    assert counters.time_regressions == 2


def test_replay_headerless_space_padded(tmp_path: Path) -> None:
    text = " -276,   -85,  -309\n  12,  34,  56\n"
    times, rows, _ = replay(tmp_path, text, columns=[0, 1, 2], header=False, rate_hz=26.0)
    assert rows == [[-276.0, -85.0, -309.0], [12.0, 34.0, 56.0]]
    assert times[1] - times[0] == pytest.approx(1 / 26, abs=1e-5)


def test_replay_parses_time_format(tmp_path: Path) -> None:
    text = "timestamp,value\n2013-12-02 21:15:00,73.9\n2013-12-02 21:20:00,74.9\n"
    times, rows, _ = replay(
        tmp_path, text, columns=["value"], time_column="timestamp", time_format="%Y-%m-%d %H:%M:%S"
    )
    assert times == [1386018900.0, 1386019200.0]
    assert rows == [[73.9], [74.9]]


def test_replay_jsonl_with_bad_records(tmp_path: Path) -> None:
    path = tmp_path / "input.jsonl"
    path.write_text('{"t": 1, "a": 1.5}\n{broken\n[1, 2]\n{"t": 2, "a": "x"}\n{"t": 3, "a": 2}\n')
    config = ReplaySourceConfig(type="jsonl", path=[path], columns=["a"], time_column="t")
    sample_filter = SampleFilter("s", BadInputConfig(), 1)
    chunks = [
        c
        for c in ReplaySource(config, sample_filter).chunks(threading.Event())
        if not isinstance(c, SegmentBreak)
    ]
    assert np.concatenate([c[1] for c in chunks]).ravel().tolist() == [1.5, 2.0]
    assert sample_filter.counters.malformed_lines == 2
    assert sample_filter.counters.missing_values == 1


def test_replay_missing_column_skips_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    times, _, _ = replay(tmp_path, "a,b\n1,2\n", columns=["c"])
    assert times == []
    assert "column 'c' is not in the header" in caplog.text


def test_synthetic_signal_is_deterministic() -> None:
    first, flags = SyntheticSignal(3).read(3000)
    second = np.concatenate([SyntheticSignal(3).read(1000)[0] for _ in range(1)])
    assert np.array_equal(first[:1000], second)
    assert flags.any()
    assert not np.array_equal(first, SyntheticSignal(4).read(3000)[0])


def test_parse_since_forms() -> None:
    assert parse_since("10m", now=1000.0) == 400.0
    assert parse_since("1700000000") == 1700000000.0
    assert parse_since("2024-01-01T00:00:00") == 1704067200.0
    with pytest.raises(ValueError, match="invalid time 'yesterday'"):
        parse_since("yesterday")


def test_replay_stray_quote_loses_one_row(tmp_path: Path) -> None:
    lines = ["t,x", *(f"{i},{i}.5" for i in range(1, 6))]
    lines[2] = '"2,2.5'
    times, rows, sample_filter = replay(
        tmp_path, "\n".join(lines) + "\n", columns=["x"], time_column="t"
    )
    assert times == [1.0, 3.0, 4.0, 5.0]
    assert sample_filter.counters.malformed_lines == 1


def test_replay_jsonl_names_missing_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "input.jsonl"
    path.write_text('{"t": 1, "x": 1.5}\n')
    config = ReplaySourceConfig(type="jsonl", path=[path], columns=["X"], time_column="t")
    sample_filter = SampleFilter("s", BadInputConfig(), 1)
    list(ReplaySource(config, sample_filter).chunks(threading.Event()))
    assert sample_filter.counters.malformed_lines == 1
    assert "key 'X' is not in the record (its keys: t, x); check columns" in caplog.text


def test_replay_block_and_row_paths_agree(tmp_path: Path) -> None:
    lines = ["t,x,y"] + [f"{i},{i * 0.5},{-i}" for i in range(1, 1001)]
    lines[300] = "300,nan,1"
    lines[700] = "650,1,1"
    lines[900] = "bad line"
    text = "\n".join(lines) + "\n"
    fast = replay(tmp_path, text, columns=["x", "y"], time_column="t")
    paced = replay(
        tmp_path, text, columns=["x", "y"], time_column="t", playback="realtime", speed=1e9
    )
    assert fast[0] == paced[0]
    assert fast[1] == paced[1]
    assert fast[2].counters == paced[2].counters
    assert len(fast[0]) == 997
    assert fast[2].counters.nonfinite_values == 1
    assert fast[2].counters.time_regressions == 1
    assert fast[2].counters.malformed_lines == 1

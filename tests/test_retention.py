"""Retention by age and by disk budget, in bounded batches, keeping unsent summaries."""

from __future__ import annotations

import struct
import threading
from pathlib import Path

from edgeward.config import load_config_text
from edgeward.store.database import open_database
from edgeward.store.retention import Pruner, used_bytes
from edgeward.store.rows import MarkSent, ResultRow, SummaryRow
from edgeward.store.writer import Writer

KEY = bytes(range(32))


def result(data_class: str, payload: bytes = b"") -> ResultRow:
    return ResultRow(
        "s", data_class, 1.0, "0" * 64, "a", 0.5, False, struct.pack("<d", 0.5), payload
    )


def summary(seq: int, created_at: float) -> SummaryRow:
    return SummaryRow(
        "s",
        "summary",
        seq,
        0.0,
        10.0,
        1,
        "{}",
        0.5,
        0.5,
        0,
        "0" * 64,
        created_at,
        f"m{seq}",
        "t",
        b"{}",
    )


def setup(tmp_path: Path, classes: str, budget: str = "") -> tuple[Writer, Pruner, object]:
    config = load_config_text(
        f"device_id: d\ndatabase: {{batch_interval: 0.01 {budget}}}\ndata_classes:\n{classes}"
    )
    connection = open_database(tmp_path / "db", KEY, writer=True)
    writer = Writer(connection, batch_interval=0.01)
    writer.start()
    reader = open_database(tmp_path / "db", KEY)
    return writer, Pruner(config, writer, reader, threading.Lock()), reader


def count(reader: object, sql: str) -> int:
    value: int = reader.execute(sql).fetchone()[0]  # type: ignore[attr-defined]
    return value


def test_age_pruning_deletes_only_old_rows(tmp_path: Path) -> None:
    classes = "  inference: {retention: 1s}\n  keep: {retention: 30d}\n  summary: {retention: 1s}\n"
    writer, pruner, reader = setup(tmp_path, classes)
    writer.put([result("inference") for _ in range(2500)] + [result("keep") for _ in range(10)])
    writer.put(summary(1, 0.0))
    writer.put(summary(2, 0.0))
    assert writer.flush(10)
    outbox_id = reader.execute("SELECT id FROM outbox ORDER BY id LIMIT 1").fetchone()[0]  # type: ignore[attr-defined]
    writer.put(MarkSent([outbox_id], 1.0))
    assert writer.flush(10)

    threading.Event().wait(1.2)
    writer.put([result("inference") for _ in range(5)])
    assert writer.flush(10)
    pruner.run_once()

    assert count(reader, "SELECT count(*) FROM results WHERE data_class = 'inference'") == 5
    assert count(reader, "SELECT count(*) FROM results WHERE data_class = 'keep'") == 10
    assert count(reader, "SELECT seq FROM summaries") == 2
    assert pruner.deleted == {"inference": 2500, "summary": 1}
    writer.stop()


def test_budget_pruning_takes_lowest_tier_first(tmp_path: Path) -> None:
    classes = "  low: {tier: public}\n  high: {tier: restricted}\n"
    writer, pruner, reader = setup(tmp_path, classes, budget=", disk_budget: 600000")
    blob = bytes(200)
    writer.put([result("high", blob) for _ in range(1000)])
    writer.put([result("low", blob) for _ in range(3000)])
    assert writer.flush(10)
    assert used_bytes(reader) > 600000

    pruner.run_once()

    assert used_bytes(reader) <= 600000
    assert count(reader, "SELECT count(*) FROM results WHERE data_class = 'high'") == 1000
    assert count(reader, "SELECT count(*) FROM results WHERE data_class = 'low'") < 3000
    writer.stop()


def test_budget_share_prunes_the_class_over_its_share(tmp_path: Path) -> None:
    classes = "  greedy: {tier: restricted, budget_share: 0.3}\n  modest: {tier: public}\n"
    writer, pruner, reader = setup(tmp_path, classes, budget=", disk_budget: 1200000")
    blob = bytes(200)
    writer.put([result("modest", blob) for _ in range(1200)])
    writer.put([result("greedy", blob) for _ in range(3000)])
    assert writer.flush(10)
    assert used_bytes(reader) > 1200000

    pruner.run_once()

    assert used_bytes(reader) <= 1200000
    assert count(reader, "SELECT count(*) FROM results WHERE data_class = 'modest'") == 1200
    assert count(reader, "SELECT count(*) FROM results WHERE data_class = 'greedy'") < 3000
    writer.stop()

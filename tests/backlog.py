"""Fill a daemon's outbox with summaries before it starts, as a long outage would leave it."""

from __future__ import annotations

import json
import time
from pathlib import Path

from edgeward.agent.payloads import new_message_id, summary_payload, summary_topic
from edgeward.agent.summaries import Summary
from edgeward.security.keys import DATABASE_KEY_INFO, derive_key, load_master_key
from edgeward.store.database import open_database

MODEL_SHA256 = "ab" * 32
ROWS_PER_TRANSACTION = 50_000


def database_key(key_file: Path) -> bytes:
    """Create the master key file when missing and return the database key derived from it."""
    return derive_key(load_master_key(key_file, create=True), DATABASE_KEY_INFO)


def fill_outbox(
    database: Path,
    key: bytes,
    device_id: str,
    streams: list[str],
    per_stream: int,
    prefix: str = "edgeward/v1",
    data_class: str = "summary",
) -> None:
    """Store `per_stream` unsent summaries for each stream, interleaved, with seq 1, 2, ..."""
    database.parent.mkdir(parents=True, exist_ok=True)
    connection = open_database(database, key, writer=True)
    now = time.time()
    summaries = []
    outbox = []
    next_id = 1
    for seq in range(1, per_stream + 1):
        for stream in streams:
            start = 1_700_000_000.0 + seq * 60
            summary = Summary(stream, start, start + 60, 60, {"normal": 60}, 30.0, 0.9, 0)
            message_id = new_message_id()
            payload = summary_payload(summary, device_id, data_class, seq, message_id, MODEL_SHA256)
            summaries.append(
                (
                    next_id,
                    stream,
                    data_class,
                    seq,
                    start,
                    start + 60,
                    60,
                    json.dumps({"normal": 60}),
                )
            )
            topic = summary_topic(prefix, device_id, stream)
            outbox.append((next_id, stream, data_class, message_id, topic, payload, now))
            next_id += 1
            if len(summaries) >= ROWS_PER_TRANSACTION:
                _insert(connection, summaries, outbox, now)
                summaries, outbox = [], []
    _insert(connection, summaries, outbox, now)
    connection.close()


def _insert(
    connection: object,
    summaries: list[tuple[object, ...]],
    outbox: list[tuple[object, ...]],
    now: float,
) -> None:
    execute = connection.execute  # type: ignore[attr-defined]
    executemany = connection.executemany  # type: ignore[attr-defined]
    execute("BEGIN")
    executemany(
        "INSERT INTO summaries (id, stream, data_class, seq, period_start, period_end, windows,"
        f" label_counts, mean_score, max_score, anomalies, model_sha256, created_at)"
        f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0.5, 0.9, 0, '{MODEL_SHA256}', {now})",
        summaries,
    )
    executemany(
        "INSERT INTO outbox (kind, summary_id, stream, data_class, message_id, topic, payload,"
        " created_at) VALUES ('summary', ?, ?, ?, ?, ?, ?, ?)",
        outbox,
    )
    execute("COMMIT")

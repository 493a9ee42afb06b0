"""Read queries for the API, the uplink and the status. Each takes its own connection."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

DEFAULT_LIMIT = 100
MAX_LIMIT = 10000


Unsealer = Callable[[str, str, bytes], dict[str, Any] | None]


def query_results(
    connection: Any,
    stream: str | None,
    since: float | None,
    limit: int,
    unsealer: Unsealer | None = None,
) -> list[dict[str, Any]]:
    """Return result rows, newest first; sealed rows are opened with `unsealer` when it can."""
    where, params = _filters(stream, since, "ts")
    rows = connection.execute(
        "SELECT id, stream, data_class, ts, model_sha256, label, score, anomaly, outputs, sealed,"
        f" raw_output FROM results{where} ORDER BY ts DESC, id DESC LIMIT ?",
        (*params, limit),
    ).fetchall()
    return [_result_row(r, unsealer) for r in rows]


def _result_row(r: tuple[Any, ...], unsealer: Unsealer | None) -> dict[str, Any]:
    row = {
        "id": r[0],
        "stream": r[1],
        "data_class": r[2],
        "ts": r[3],
        "model_sha256": r[4],
        "label": r[5],
        "score": r[6],
        "anomaly": bool(r[7]),
        "outputs": np.frombuffer(r[8], dtype="<f8").tolist(),
        "sealed": bool(r[9]),
    }
    if not r[9]:
        return row
    opened = unsealer(r[2], r[1], r[10]) if unsealer is not None else None
    if opened is None:
        row["readable"] = False
        return row
    row.update(
        label=opened["label"],
        score=opened["score"],
        anomaly=opened["anomaly"],
        outputs=opened["outputs"],
    )
    row["readable"] = True
    return row


def query_summaries(
    connection: Any, stream: str | None, since: float | None, limit: int
) -> list[dict[str, Any]]:
    """Return summaries with their delivery state, newest first."""
    where, params = _filters(stream, since, "s.period_start")
    rows = connection.execute(
        "SELECT s.id, s.stream, s.data_class, s.seq, s.period_start, s.period_end, s.windows,"
        " s.label_counts, s.mean_score, s.max_score, s.anomalies, s.model_sha256, o.message_id,"
        " o.sent_at FROM summaries s LEFT JOIN outbox o ON o.summary_id = s.id"
        f"{where} ORDER BY s.period_start DESC, s.id DESC LIMIT ?",
        (*params, limit),
    ).fetchall()
    return [
        {
            "id": r[0],
            "stream": r[1],
            "data_class": r[2],
            "seq": r[3],
            "period_start": r[4],
            "period_end": r[5],
            "windows": r[6],
            "label_counts": json.loads(r[7]),
            "mean_score": r[8],
            "max_score": r[9],
            "anomalies": r[10],
            "model_sha256": r[11],
            "message_id": r[12],
            "sent_at": r[13],
        }
        for r in rows
    ]


def count_rows(connection: Any) -> dict[str, Any]:
    """Return the row counts of the main tables and the unsent outbox backlog."""
    # NOTE: count(*) scans the whole table, so a status call costs time in proportion to the stored results.
    results = connection.execute("SELECT count(*) FROM results").fetchone()[0]
    summaries = connection.execute("SELECT count(*) FROM summaries").fetchone()[0]
    alerts = connection.execute("SELECT count(*) FROM alerts").fetchone()[0]
    backlog = connection.execute(
        "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND withheld_at IS NULL"
    ).fetchone()[0]
    # Ids grow with created_at, so each kind's first unsent row is its oldest.
    firsts = [
        connection.execute(
            "SELECT created_at FROM outbox WHERE kind = ? AND sent_at IS NULL"
            " AND withheld_at IS NULL ORDER BY id LIMIT 1",
            (kind,),
        ).fetchone()
        for kind in ("alert", "summary")
    ]
    oldest = min((row[0] for row in firsts if row is not None), default=None)
    withheld = connection.execute(
        "SELECT count(*) FROM outbox WHERE withheld_at IS NOT NULL"
    ).fetchone()[0]
    return {
        "outbox_withheld": withheld,
        "results": results,
        "summaries": summaries,
        "alerts": alerts,
        "outbox_backlog": backlog,
        "outbox_oldest_unsent": oldest,
    }


def unsent_page(
    connection: Any, kind: str, after_id: int, limit: int
) -> list[tuple[int, str, bytes, str, str, str]]:
    """Return up to `limit` unsent outbox rows of one kind after `after_id`, in id order.

    Each row is (id, topic, payload, data class, stream, message id).
    """
    rows: list[tuple[int, str, bytes, str, str, str]] = connection.execute(
        "SELECT id, topic, payload, data_class, stream, message_id FROM outbox"
        " WHERE kind = ? AND sent_at IS NULL AND withheld_at IS NULL AND id > ?"
        " ORDER BY id LIMIT ?",
        (kind, after_id, limit),
    ).fetchall()
    return rows


def recent_egress(connection: Any, since: float) -> list[tuple[float, int]]:
    """Return (time, payload and topic bytes) of each message published since `since`, newest first."""
    found = []
    # The audit log's ids grow with time, so reading backwards can stop at the first older event.
    for at, event, details in connection.execute(
        "SELECT at, event, details FROM audit_log ORDER BY id DESC"
    ):
        if at < since:
            break
        if event == "egress":
            for record in json.loads(details)["messages"]:
                size = int(record["bytes"]) + len(record["topic"].encode())
                found.append((at, size))
    return found


def handed_through(connection: Any) -> int:
    """Return the highest outbox id an earlier run handed to the MQTT client."""
    row = connection.execute("SELECT handed_through FROM uplink_state").fetchone()
    return int(row[0]) if row else 0


def unsent_through(connection: Any, last_id: int) -> int:
    """Count the unsent outbox rows with ids up to `last_id`."""
    row = connection.execute(
        "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND withheld_at IS NULL AND id <= ?",
        (last_id,),
    ).fetchone()
    return int(row[0])


def last_sequences(connection: Any, table: str = "summaries") -> dict[str, int]:
    """Return each stream's highest sequence number in `table` (summaries or alerts)."""
    if table not in ("summaries", "alerts"):
        raise ValueError(f"no sequence numbers in table {table!r}")
    rows = connection.execute(f"SELECT stream, max(seq) FROM {table} GROUP BY stream").fetchall()
    return {stream: seq for stream, seq in rows}


def integrity_problems(connection: Any) -> list[str]:
    """Return SQLCipher's HMAC failures, one line per bad page; empty when every page checks out."""
    return [row[0] for row in connection.execute("PRAGMA cipher_integrity_check").fetchall()]


def stream_has_rows(connection: Any, stream: str) -> bool:
    """Tell whether any result or summary of `stream` is stored."""
    row = connection.execute(
        "SELECT EXISTS (SELECT 1 FROM results WHERE stream = ?)"
        " OR EXISTS (SELECT 1 FROM summaries WHERE stream = ?)",
        (stream, stream),
    ).fetchone()
    return bool(row[0])


def _filters(stream: str | None, since: float | None, time_column: str) -> tuple[str, list[Any]]:
    clauses = []
    params: list[Any] = []
    prefix = "s." if time_column.startswith("s.") else ""
    if stream is not None:
        clauses.append(f"{prefix}stream = ?")
        params.append(stream)
    if since is not None:
        clauses.append(f"{time_column} >= ?")
        params.append(since)
    where = " WHERE " + " AND ".join(clauses) if clauses else ""
    return where, params

"""The export route: everything stored about one subject, in pages, with the first page audited."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edgeward.agent.api import BadRequest, Handler, Request, allow_parameters
from edgeward.config.schema import Config
from edgeward.store.audit import AuditEvent
from edgeward.store.ledger import ConsentLedger
from edgeward.store.rows import LedgerEntry
from edgeward.store.writer import Writer

TABLES = ("consents", "results", "summaries")
MAX_PAGE = 5000


def export_routes(
    current_config: Callable[[], Config],
    ledger: ConsentLedger,
    writer: Writer,
    connection: Any,
    lock: threading.Lock,
) -> dict[str, dict[str, Handler]]:
    """Build the handler of GET /v1/export?subject=S&table=T&after=ID&limit=N.

    `current_config` returns the running config, which a reload replaces.
    """

    def export(request: Request) -> dict[str, Any]:
        config = current_config()
        allow_parameters(request.query, {"subject", "table", "after", "limit"})
        subject = request.query.get("subject", "")
        if subject not in config.known_subjects():
            known = ", ".join(sorted(config.known_subjects()))
            raise BadRequest(f"unknown subject {subject!r}; known subjects: {known}")
        table = request.query.get("table", "consents")
        if table not in TABLES:
            raise BadRequest(f"table must be one of {', '.join(TABLES)}, got {table!r}")
        after = _integer(request.query, "after", 0)
        limit = min(_integer(request.query, "limit", 1000), MAX_PAGE)

        if table == "consents" and after == 0:
            actor = f"uid:{request.uid}" if request.uid is not None else "uid:unknown"
            entry = LedgerEntry(
                None, [AuditEvent(time.time(), actor, "export.subject", {"subject": subject})]
            )
            writer.put(entry)
            entry.done.wait(30)

        streams = [s.name for s in config.streams if s.subject == subject]
        with lock:
            rows = _page(connection, table, subject, streams, after, limit)
        next_after = rows[-1]["id"] if len(rows) == limit else None
        return {"subject": subject, "table": table, "rows": rows, "next_after": next_after}

    return {"/v1/export": {"GET": export}}


def _page(
    connection: Any, table: str, subject: str, streams: list[str], after: int, limit: int
) -> list[dict[str, Any]]:
    if table == "consents":
        cursor = connection.execute(
            "SELECT * FROM consents WHERE subject = ? AND id > ? ORDER BY id LIMIT ?",
            (subject, after, limit),
        )
    else:
        if not streams:
            return []
        marks = ", ".join("?" * len(streams))
        cursor = connection.execute(
            f"SELECT * FROM {table} WHERE stream IN ({marks}) AND id > ? ORDER BY id LIMIT ?",
            (*streams, after, limit),
        )
    names = [description[0] for description in cursor.description]
    return [_jsonable(dict(zip(names, row, strict=True)), table) for row in cursor.fetchall()]


def _jsonable(row: dict[str, Any], table: str) -> dict[str, Any]:
    if table == "results":
        row["outputs"] = np.frombuffer(row["outputs"], dtype="<f8").tolist()
        row["raw_output"] = row["raw_output"].hex()
    return row


def _integer(query: dict[str, str], key: str, default: int) -> int:
    text = query.get(key)
    if text is None:
        return default
    if not text.isdigit():
        raise BadRequest(f"{key} must be a non-negative integer, got {text!r}")
    return int(text)

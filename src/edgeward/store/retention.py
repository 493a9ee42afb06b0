"""Retention: delete rows past their class's max age, and the oldest lowest-tier rows over the disk budget.

Pruning runs in bounded batches, each one writer item in a transaction of its
own, so ingest commits go on between batches. Summaries and alerts whose
outbox row still waits to be sent are never pruned.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from edgeward.config.schema import Config

log = logging.getLogger(__name__)

BATCH_ROWS = 1000
TIER_ORDER = ("public", "internal", "confidential", "restricted")
# Table -> (its outbox reference, its time column).
_MESSAGE_TABLES = {"summaries": ("summary_id", "created_at"), "alerts": ("alert_id", "detected_at")}


@dataclass
class Prune:
    """A writer item: delete at most `limit` rows of one class stored before `before`."""

    table: str
    data_class: str
    before: float
    limit: int = BATCH_ROWS
    done: threading.Event = field(default_factory=threading.Event)
    deleted: int = 0


def prune_batch(connection: Any, item: Prune) -> int:
    """Delete one batch inside the writer's transaction; return how many rows went."""
    if item.table == "results":
        last_id = _last_id_before(connection, item.before)
        if last_id is None:
            return 0
        cursor = connection.execute(
            "DELETE FROM results WHERE id IN (SELECT id FROM results"
            " WHERE id <= ? AND data_class = ? ORDER BY id LIMIT ?)",
            (last_id, item.data_class, item.limit),
        )
        return int(cursor.rowcount)

    reference, time_column = _MESSAGE_TABLES[item.table]
    unsent = (
        f"SELECT {reference} FROM outbox WHERE kind = ? AND sent_at IS NULL AND withheld_at IS NULL"
    )
    selection = (
        f"SELECT id FROM {item.table} WHERE data_class = ? AND {time_column} < ?"
        f" AND id NOT IN ({unsent}) ORDER BY id LIMIT ?"
    )
    kind = "summary" if item.table == "summaries" else "alert"
    params = (item.data_class, item.before, kind, item.limit)
    connection.execute(f"DELETE FROM outbox WHERE {reference} IN ({selection})", params)
    cursor = connection.execute(f"DELETE FROM {item.table} WHERE id IN ({selection})", params)
    return int(cursor.rowcount)


def _last_id_before(connection: Any, before: float) -> int | None:
    # stored_at never decreases with id (one writer commits in order), so a
    # binary search over ids finds the cutoff without an index on stored_at.
    low, high = connection.execute("SELECT min(id), max(id) FROM results").fetchone()
    if low is None:
        return None
    found = None
    while low <= high:
        middle = (low + high) // 2
        row = connection.execute(
            "SELECT id, stored_at FROM results WHERE id >= ? ORDER BY id LIMIT 1", (middle,)
        ).fetchone()
        if row is None or row[1] is None or row[1] >= before:
            high = middle - 1
        else:
            found = row[0]
            low = row[0] + 1
    return found


def used_bytes(connection: Any) -> int:
    """Return the bytes of database pages in use (free pages excluded)."""
    # SQLCipher returns some pragma values as text, so each is converted.
    page_size = int(connection.execute("PRAGMA page_size").fetchone()[0])
    pages = int(connection.execute("PRAGMA page_count").fetchone()[0])
    free = int(connection.execute("PRAGMA freelist_count").fetchone()[0])
    return (pages - free) * page_size


class Pruner:
    """A thread that queues prune batches every `interval` seconds and waits for each."""

    def __init__(
        self, config: Config, writer: Any, read_connection: Any, read_lock: threading.Lock
    ) -> None:
        self._config = config
        self._writer = writer
        self._connection = read_connection
        self._lock = read_lock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgeward-retention", daemon=True)
        self.deleted: dict[str, int] = {}
        self.last_run: float | None = None

    def start(self) -> None:
        self._thread.start()

    def reconfigure(self, config: Config) -> None:
        """Use a reloaded config's retention and budget from the next pass on."""
        self._config = config

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join()

    def run_once(self) -> None:
        """Prune by age, then by budget."""
        now = time.time()
        for name, data_class in self._config.data_classes.items():
            for table in ("results", "summaries", "alerts"):
                self._drain(Prune(table, name, now - data_class.retention))
        self._enforce_budget()
        self.last_run = now

    def _run(self) -> None:
        while not self._stop.wait(self._config.database.prune_interval):
            try:
                self.run_once()
            except Exception:
                log.exception("retention pass failed; retrying at the next interval")

    def _drain(self, item: Prune) -> int:
        total = 0
        while not self._stop.is_set():
            batch = Prune(item.table, item.data_class, item.before, item.limit)
            if not self._writer.put(batch) or not batch.done.wait(60):
                break
            total += batch.deleted
            if batch.deleted < batch.limit:
                break
        if total:
            self.deleted[item.data_class] = self.deleted.get(item.data_class, 0) + total
            log.info(
                "retention: deleted %d %s rows of class %s", total, item.table, item.data_class
            )
        return total

    def _enforce_budget(self) -> None:
        budget = self._config.database.disk_budget
        if budget is None:
            return
        self._enforce_shares(budget)
        classes = sorted(
            self._config.data_classes.items(), key=lambda item: TIER_ORDER.index(item[1].tier)
        )
        for name, _ in classes:
            while self._over_budget(budget):
                if self._drain_one_batch(name) == 0:
                    break
            if not self._over_budget(budget):
                return
        log.warning(
            "retention: the database still uses more than its budget of %d bytes after pruning "
            "every class; unsent summaries and alerts are kept",
            budget,
        )

    def _enforce_shares(self, budget: int) -> None:
        """Prune the classes that fill more than their budget_share, while over the budget."""
        for name, data_class in self._config.data_classes.items():
            share = data_class.budget_share
            if share is None:
                continue
            while self._over_budget(budget) and self._class_bytes(name) > share * budget:
                if self._drain_one_batch(name) == 0:
                    break

    def _class_bytes(self, name: str) -> float:
        # An estimate: the used bytes split by each class's share of the result rows.
        with self._lock:
            rows = dict(
                self._connection.execute(
                    "SELECT data_class, count(*) FROM results GROUP BY data_class"
                ).fetchall()
            )
            used = used_bytes(self._connection)
        total = sum(rows.values())
        return used * rows.get(name, 0) / total if total else 0.0

    def _drain_one_batch(self, name: str) -> int:
        deleted = 0
        for table in ("results", "summaries", "alerts"):
            batch = Prune(table, name, float("inf"))
            if self._writer.put(batch) and batch.done.wait(60):
                deleted += batch.deleted
        if deleted:
            self.deleted[name] = self.deleted.get(name, 0) + deleted
            log.warning(
                "retention: over the disk budget, deleted the %d oldest rows of class %s",
                deleted,
                name,
            )
        return deleted

    def _over_budget(self, budget: int) -> bool:
        with self._lock:
            return used_bytes(self._connection) > budget

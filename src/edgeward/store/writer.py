"""The single writer thread: batches queued rows into transactions.

Every write goes through this thread, so SQLite never has two writers. A
batch closes when it has `batch_size` items, `batch_interval` seconds after
its first item, or at once when it contains an alert. It is committed as one
transaction: a summary or an alert and its outbox row always land together.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlcipher3

from edgeward.ratelimit import RateLimitedLog
from edgeward.store.audit import insert_event, read_head
from edgeward.store.consent import classes_json
from edgeward.store.reserve import DiskReserve
from edgeward.store.retention import Prune, prune_batch
from edgeward.store.rows import (
    AlertRow,
    Barrier,
    Erasure,
    LedgerEntry,
    MarkSent,
    MarkWithheld,
    ResultRow,
    SummaryRow,
    Withdrawal,
)

log = logging.getLogger(__name__)

Item = (
    ResultRow
    | SummaryRow
    | AlertRow
    | MarkSent
    | MarkWithheld
    | LedgerEntry
    | Barrier
    | list[ResultRow]
)
_STOP = object()
RETRY_DELAY = 1.0
QUEUE_POLL = 0.5
DEGRADED_HOLD = 10.0
# 200 rows of 11 parameters stay far below SQLite's limit of 32766 parameters per statement.
ROWS_PER_INSERT = 200
FAILURE_LOG_INTERVAL = 60.0


@dataclass
class WriterCounters:
    """Counts of the writer's commits, for the status."""

    results: int = 0
    summaries: int = 0
    alerts: int = 0
    marked_sent: int = 0
    transactions: int = 0
    failed_transactions: int = 0
    # Rows dropped because the writer gave up at shutdown.
    abandoned: int = 0
    # New rows per class not stored, and stored rows per class deleted, on a full disk.
    dropped_disk_full: dict[str, int] = field(default_factory=dict)
    freed_disk_full: dict[str, int] = field(default_factory=dict)


class Writer:
    """Own the write connection and commit queued rows in batches."""

    def __init__(
        self,
        connection: Any,
        batch_size: int = 256,
        batch_interval: float = 0.2,
        max_queued: int = 10000,
        tiers: dict[str, int] | None = None,
        on_outbox: Callable[[bool], None] | None = None,
        reserve: DiskReserve | None = None,
    ) -> None:
        self._connection = connection
        self._batch_size = batch_size
        self._batch_interval = batch_interval
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queued)
        self._thread = threading.Thread(target=self._run, name="edgeward-writer", daemon=True)
        self.counters = WriterCounters()
        self.last_error: str | None = None
        self._abandoned = threading.Event()
        self._heartbeat = time.monotonic()
        self._audit_head = read_head(connection)
        # Data class -> tier rank (0 is the lowest), for shedding on a full disk.
        self._tiers = tiers or {}
        self._last_disk_full: float | None = None
        # Whether the WAL was already truncated since the last successful commit.
        self._wal_truncated = False
        self._reserve = reserve
        self._reserve_tried = time.monotonic()
        if reserve is not None:
            reserve.restore()
        self._failures = RateLimitedLog(log, FAILURE_LOG_INTERVAL)
        # Called after a commit that added outbox rows, so the uplink sends them
        # at once. The argument is True when alerts were among them.
        self.on_outbox = on_outbox

    def start(self) -> None:
        self._thread.start()

    def put(self, item: Item) -> bool:
        """Queue an item; block while the queue is full, which slows the producers down.

        Returns False, and drops the item, only once the writer has given up at shutdown.
        """
        while not self._abandoned.is_set():
            try:
                self._queue.put(item, timeout=QUEUE_POLL)
                return True
            except queue.Full:
                continue
        self.counters.abandoned += _row_count(item)
        return False

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is committed. Returns False on timeout."""
        barrier = Barrier()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                self._queue.put(barrier, timeout=QUEUE_POLL if remaining is None else remaining)
                break
            except queue.Full:
                if remaining == 0.0 or self._abandoned.is_set():
                    return False
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        return barrier.done.wait(remaining)

    def stop(self, timeout: float = 30.0) -> bool:
        """Commit everything queued, then end the thread.

        When the database still rejects writes after `timeout` seconds (a full
        disk, say), the writer gives up: the rows still in memory are counted
        in `counters.abandoned` and logged, and stop() returns False.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self._queue.put(_STOP, timeout=QUEUE_POLL)
                break
            except queue.Full:
                continue
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if not self._thread.is_alive():
            return self.counters.abandoned == 0

        self._abandoned.set()
        self._thread.join()
        left = 0
        while True:
            try:
                left += _row_count(self._queue.get_nowait())
            except queue.Empty:
                break
        self.counters.abandoned += left
        log.error(
            "gave up writing to the database at shutdown: %d results and summaries were not "
            "committed (last error: %s)",
            self.counters.abandoned,
            self.last_error,
        )
        return False

    @property
    def degraded(self) -> bool:
        """True while the disk was found full in the last DEGRADED_HOLD seconds."""
        last = self._last_disk_full
        return last is not None and time.monotonic() - last < DEGRADED_HOLD

    def alive(self, max_silence: float) -> bool:
        """Tell whether the writer thread has gone round its loop in the last `max_silence` seconds."""
        return self._thread.is_alive() and time.monotonic() - self._heartbeat < max_silence

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        stopping = False
        while not stopping and not self._abandoned.is_set():
            self._heartbeat = time.monotonic()
            batch, stopping = self._collect()
            if batch:
                self._commit_with_retry(batch)

    def _collect(self) -> tuple[list[Any], bool]:
        try:
            first = self._queue.get(timeout=QUEUE_POLL)
        except queue.Empty:
            return [], False
        if first is _STOP:
            return [], True
        batch = [first]
        if isinstance(first, AlertRow):
            # An alert waits for nothing: its commit is the start of its delivery.
            return batch, False
        deadline = time.monotonic() + self._batch_interval
        while len(batch) < self._batch_size:
            remaining = deadline - time.monotonic()
            try:
                item = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
            if isinstance(item, (Barrier, AlertRow)):
                break
        return batch, False

    def _commit_with_retry(self, batch: list[Any]) -> None:
        # A failed commit (a full disk, say) is retried until it succeeds, so
        # queued rows are not dropped while the daemon runs. The queue bound
        # stops the producers meanwhile, and only stop() makes it give up.
        while True:
            try:
                self._commit(batch)
            except sqlcipher3.Error as error:
                self.counters.failed_transactions += 1
                self.last_error = str(error)
                self._failures.warning(
                    "commit",
                    "database write failed: %s; %d queued items wait in memory, retrying every %.0f s",
                    error,
                    self._queue.qsize() + len(batch),
                    RETRY_DELAY,
                )
                self._heartbeat = time.monotonic()
                if _is_disk_full(error) and self._make_room(batch):
                    # Retry at once: the lowest tier gave way to the rest.
                    batch = [item for item in batch if not _is_empty(item)]
                    continue
                if self._abandoned.wait(RETRY_DELAY):
                    self.counters.abandoned += sum(_row_count(item) for item in batch)
                    return
                continue
            break
        self._wal_truncated = False
        self._restore_reserve()
        if self.last_error is not None:
            log.info(
                "database writes succeed again after %d failed transactions",
                self.counters.failed_transactions,
            )
            self.last_error = None
        for item in batch:
            if isinstance(item, Barrier):
                item.done.set()

    def _make_room(self, batch: list[Any]) -> bool:
        """On a full disk, give way to the higher tiers; True when something was given up.

        First the batch's new rows of tiers below its highest go, lowest tier
        first; then stored rows of those tiers, oldest first. Rows of the
        highest tier are never given up here: they wait and are retried.
        """
        gained = False
        if not self._wal_truncated:
            # Once per full-disk episode, so a batch that does not fit cannot
            # make this loop: give back the reserve file, then checkpoint and
            # truncate the WAL, which can hold much of a small disk.
            self._wal_truncated = True
            released = self._reserve is not None and self._reserve.release()
            gained = self._truncate_wal() or released
        if not self._tiers:
            return gained
        ranks = {
            row.data_class: self._tiers.get(row.data_class, 0)
            for item in batch
            for row in _results_of(item)
        }
        top = max(ranks.values()) if ranks else max(self._tiers.values()) + 1
        lower = sorted((rank, name) for name, rank in ranks.items() if rank < top)
        self._last_disk_full = time.monotonic()
        if lower:
            self._shed(batch, lower[0][1])
            if gained:
                # Spend the space just gained on deleting stored lower-tier
                # rows, whose pages the higher tiers then reuse.
                self._free_below(top)
            return True
        return self._free_below(top) or gained

    def _restore_reserve(self) -> None:
        """Make the reserve file again once the disk has not been full for a while."""
        if self._reserve is None or self._reserve.held or self.degraded:
            return
        now = time.monotonic()
        if now - self._reserve_tried < DEGRADED_HOLD:
            return
        self._reserve_tried = now
        if self._reserve.restore():
            log.info("disk has room again: restored the reserve file %s", self._reserve.path)

    def _truncate_wal(self) -> bool:
        """Checkpoint the WAL and truncate it; True when it held frames and was emptied."""
        try:
            busy, frames, _ = self._connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlcipher3.Error as error:
            log.warning("disk full: WAL checkpoint failed: %s", error)
            return False
        if busy or frames <= 0:
            return False
        log.warning("disk full: checkpointed and truncated the WAL (%d frames)", frames)
        return True

    def _shed(self, batch: list[Any], data_class: str) -> None:
        dropped = 0
        for index, item in enumerate(batch):
            if isinstance(item, list):
                kept = [row for row in item if row.data_class != data_class]
                dropped += len(item) - len(kept)
                batch[index] = kept
            elif isinstance(item, ResultRow) and item.data_class == data_class:
                batch[index] = []
                dropped += 1
        counts = self.counters.dropped_disk_full
        counts[data_class] = counts.get(data_class, 0) + dropped
        self._failures.warning(
            f"shed-{data_class}",
            "disk full: not storing new rows of class %s (a lower tier) until space returns",
            data_class,
        )

    def _free_below(self, top: int) -> bool:
        connection = self._connection
        for name in sorted(self._tiers, key=lambda n: self._tiers[n]):
            if self._tiers[name] >= top:
                break
            try:
                connection.execute("BEGIN")
                deleted = prune_batch(connection, Prune("results", name, float("inf")))
                connection.execute("COMMIT")
            except sqlcipher3.Error:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                return False
            if deleted:
                counts = self.counters.freed_disk_full
                counts[name] = counts.get(name, 0) + deleted
                log.warning(
                    "disk full: deleted the %d oldest stored rows of class %s to make room",
                    deleted,
                    name,
                )
                return True
        return False

    def _commit(self, batch: list[Any]) -> None:
        results = [row for item in batch for row in _results_of(item)]
        summaries = [item for item in batch if isinstance(item, SummaryRow)]
        alerts = [item for item in batch if isinstance(item, AlertRow)]
        sent = [item for item in batch if isinstance(item, MarkSent)]
        withheld = [item for item in batch if isinstance(item, MarkWithheld)]
        ledger = [item for item in batch if isinstance(item, LedgerEntry)]
        prunes = [item for item in batch if isinstance(item, Prune)]
        connection = self._connection
        if not (results or summaries or alerts or sent or withheld or ledger or prunes):
            return
        head = self._audit_head

        connection.execute("BEGIN")
        try:
            if results:
                _insert_results(connection, results, time.time())
            for alert in alerts:
                _insert_alert(connection, alert)
            for summary in summaries:
                _insert_summary(connection, summary)
            for mark in sent:
                connection.executemany(
                    "UPDATE outbox SET sent_at = ? WHERE id = ? AND sent_at IS NULL",
                    [(mark.sent_at, outbox_id) for outbox_id in mark.outbox_ids],
                )
                for event in mark.egress:
                    head = insert_event(connection, head, event)
            handed = max((mark.handed_through for mark in sent), default=0)
            if handed:
                connection.execute(
                    "UPDATE uplink_state SET handed_through = max(handed_through, ?)", (handed,)
                )
            for hold in withheld:
                connection.executemany(
                    "UPDATE outbox SET withheld_at = ? WHERE id = ? AND sent_at IS NULL",
                    [(hold.withheld_at, outbox_id) for outbox_id in hold.outbox_ids],
                )
            for entry in ledger:
                head = _write_ledger_entry(connection, head, entry)
            for prune in prunes:
                prune.deleted = prune_batch(connection, prune)
            connection.execute("COMMIT")
        except BaseException:
            # SQLite may already have rolled back (on SQLITE_FULL, say); a
            # second ROLLBACK would then hide the real error.
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

        self._audit_head = head
        for entry in ledger:
            entry.done.set()
        for prune in prunes:
            prune.done.set()
        self.counters.results += len(results)
        self.counters.summaries += len(summaries)
        self.counters.alerts += len(alerts)
        self.counters.marked_sent += sum(len(mark.outbox_ids) for mark in sent)
        self.counters.transactions += 1
        if (alerts or summaries) and self.on_outbox is not None:
            self.on_outbox(bool(alerts))


def _insert_results(connection: Any, results: list[ResultRow], stored_at: float) -> None:
    # Multi-row INSERTs instead of executemany(): sqlcipher3 releases the GIL
    # around each statement, so one statement per row made the writer queue
    # for the GIL once per row behind the stream threads.
    for start in range(0, len(results), ROWS_PER_INSERT):
        part = results[start : start + ROWS_PER_INSERT]
        parameters: list[Any] = []
        for r in part:
            parameters += (
                r.stream,
                r.data_class,
                r.ts,
                r.model_sha256,
                r.label,
                r.score,
                int(r.anomaly),
                r.outputs,
                r.raw_output,
                stored_at,
                int(r.sealed),
            )
        connection.execute(_insert_sql(len(part)), parameters)


@functools.lru_cache(maxsize=16)
def _insert_sql(rows: int) -> str:
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * rows)
    return (
        "INSERT INTO results (stream, data_class, ts, model_sha256, label, score, anomaly, outputs,"
        f" raw_output, stored_at, sealed) VALUES {values}"
    )


def _write_ledger_entry(
    connection: Any, head: tuple[int, str], entry: LedgerEntry
) -> tuple[int, str]:
    details: dict[str, Any] = {}
    consent = entry.consent
    if consent is not None:
        cursor = connection.execute(
            "INSERT INTO consents (subject, purpose, data_classes, action, recorded_at, expires_at,"
            " actor, method, policy_sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                consent.subject,
                consent.purpose,
                classes_json(consent.data_classes),
                consent.action,
                consent.recorded_at,
                consent.expires_at,
                consent.actor,
                consent.method,
                consent.policy_sha256,
            ),
        )
        entry.consent_id = cursor.lastrowid
        details["consent_id"] = cursor.lastrowid
    entry.erased = {}
    for erasure in entry.erasures:
        entry.erased[erasure.data_class] = _erase(connection, erasure)
    entry.withdrawn = {}
    for withdrawal in entry.withdrawals:
        entry.withdrawn[withdrawal.data_class] = _withdraw(connection, withdrawal, time.time())
    for event in entry.audit:
        event.details.update(details)
        if entry.erased and event.event.startswith(("consent.", "erase.")):
            event.details["erased_rows"] = dict(entry.erased)
        if entry.withdrawals and event.event.startswith("consent."):
            event.details["withdrawn_messages"] = dict(entry.withdrawn)
        head = insert_event(connection, head, event)
    return head


def _erase(connection: Any, erasure: Erasure) -> int:
    marks = ", ".join("?" * len(erasure.streams))
    params = (erasure.data_class, *erasure.streams)
    deleted = 0
    connection.execute(
        f"DELETE FROM outbox WHERE data_class = ? AND stream IN ({marks})",
        params,
    )
    for table in ("results", "summaries", "alerts"):
        cursor = connection.execute(
            f"DELETE FROM {table} WHERE data_class = ? AND stream IN ({marks})", params
        )
        deleted += cursor.rowcount
    return deleted


def _withdraw(connection: Any, withdrawal: Withdrawal, now: float) -> int:
    marks = ", ".join("?" * len(withdrawal.streams))
    cursor = connection.execute(
        "UPDATE outbox SET withheld_at = ? WHERE sent_at IS NULL AND withheld_at IS NULL"
        f" AND data_class = ? AND stream IN ({marks})",
        (now, withdrawal.data_class, *withdrawal.streams),
    )
    return int(cursor.rowcount)


def _is_disk_full(error: Exception) -> bool:
    return "full" in str(error).lower()


def _is_empty(item: Any) -> bool:
    return isinstance(item, list) and not item


def _row_count(item: Any) -> int:
    if isinstance(item, list):
        return len(item)
    return 1 if isinstance(item, (ResultRow, SummaryRow, AlertRow)) else 0


def _results_of(item: Any) -> Iterable[ResultRow]:
    if isinstance(item, ResultRow):
        return (item,)
    if isinstance(item, list):
        return item
    return ()


def _insert_summary(connection: Any, s: SummaryRow) -> None:
    cursor = connection.execute(
        "INSERT INTO summaries (stream, data_class, seq, period_start, period_end, windows, label_counts,"
        " mean_score, max_score, anomalies, model_sha256, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            s.stream,
            s.data_class,
            s.seq,
            s.period_start,
            s.period_end,
            s.windows,
            s.label_counts,
            s.mean_score,
            s.max_score,
            s.anomalies,
            s.model_sha256,
            s.created_at,
        ),
    )
    connection.execute(
        "INSERT INTO outbox (kind, summary_id, stream, data_class, message_id, topic, payload,"
        " created_at, withheld_at) VALUES ('summary', ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            cursor.lastrowid,
            s.stream,
            s.data_class,
            s.message_id,
            s.topic,
            s.payload,
            s.created_at,
            s.created_at if s.local_only else None,
        ),
    )


def _insert_alert(connection: Any, a: AlertRow) -> None:
    cursor = connection.execute(
        "INSERT INTO alerts (stream, data_class, seq, ts, label, score, model_sha256, detected_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (a.stream, a.data_class, a.seq, a.ts, a.label, a.score, a.model_sha256, a.detected_at),
    )
    connection.execute(
        "INSERT INTO outbox (kind, alert_id, stream, data_class, message_id, topic, payload,"
        " created_at, withheld_at) VALUES ('alert', ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            cursor.lastrowid,
            a.stream,
            a.data_class,
            a.message_id,
            a.topic,
            a.payload,
            a.detected_at,
            a.detected_at if a.local_only else None,
        ),
    )

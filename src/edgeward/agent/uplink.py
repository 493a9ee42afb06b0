"""MQTT uplink: publish the outbox with QoS 1 and mark rows sent on their PUBACK.

Store-and-forward: a summary or alert is in the outbox before it is
published, and its row is marked sent only when the broker acknowledges it.
paho re-sends in-flight messages after a reconnect. Rows never handed to
paho, or left unacknowledged when the daemon stopped, are published again on
the next start. A receiver drops duplicates by message_id.

Alerts go first: each round publishes every waiting alert before the next
summary. Waiting summaries of one stream go out together in one batch
message, up to mqtt.batch_max of them. Every message is counted against the
byte budget, and summaries leave the budget's alert share to alerts.

paho calls on_publish while holding its own lock, so the callback only queues
the message id; this thread maps ids to rows.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeward.agent.budget import ByteBudget
from edgeward.agent.mqtt_link import MqttLink
from edgeward.agent.payloads import batch_payload
from edgeward.config.schema import MqttConfig
from edgeward.ratelimit import RateLimitedLog
from edgeward.store.audit import AuditEvent
from edgeward.store.queries import handed_through, recent_egress, unsent_page, unsent_through
from edgeward.store.rows import MarkSent, MarkWithheld
from edgeward.store.writer import Writer

log = logging.getLogger(__name__)

IDLE_POLL = 0.5
FAILURE_LOG_INTERVAL = 60.0
# Publishing pauses while the writer has more items than this queued. Without
# it, PUBACKs of a fast drain queued sent-marks faster than the writer
# committed them, and the daemon grew by tens of MiB on a large backlog.
MAX_WRITER_QUEUE = 64
WRITER_WAIT = 0.01

# (id, topic, payload, data class, stream, message id), as unsent_page returns them.
OutboxRow = tuple[int, str, bytes, str, str, str]


@dataclass
class Message:
    """One MQTT message: a single outbox row, or a batch of one stream's summaries."""

    kind: str
    stream: str
    data_class: str
    topic: str
    outbox_ids: list[int]
    message_ids: list[str]
    payload: bytes
    compressed: bool = False

    @property
    def size(self) -> int:
        """Bytes counted against the budget: payload and topic."""
        return len(self.payload) + len(self.topic.encode())


class Uplink:
    """Own the MQTT link and the thread that drains the outbox."""

    def __init__(
        self,
        config: MqttConfig,
        device_id: str,
        read_connection: Any,
        writer: Writer,
        may_send: Callable[[str, str], bool] | None = None,
        grants: Callable[[str, str], list[int]] | None = None,
    ) -> None:
        self._config = config
        self._device_id = device_id
        self._connection = read_connection
        self._writer = writer
        # (data class, stream) -> whether its rows may leave the device now.
        self._may_send = may_send or (lambda data_class, stream: True)
        self._grants = grants or (lambda data_class, stream: [])

        self._cursors = {"alert": 0, "summary": 0}
        # Commits with alerts so far, and the count when the alert query last
        # came back short: the alert query runs only when they differ, not
        # once per round.
        self._alert_commits = 1
        self._alerts_read = 0
        # Summary messages built from the last page, waiting for room or budget.
        self._pending: deque[Message] = deque()
        self._inflight: dict[int, Message] = {}
        self._inflight_lock = threading.Lock()
        self._acks: queue.SimpleQueue[tuple[int, str | None]] = queue.SimpleQueue()
        self._ack_batch = max(1, config.max_inflight // 4)
        self._handed_max = 0
        self._retry_at: float | None = None
        self._sleep = IDLE_POLL
        self._wake = threading.Event()
        self._stop = threading.Event()
        # Number of the current round, and of the last round that found nothing to publish.
        self._round = 0
        self._idle_round = -1
        self._thread = threading.Thread(target=self._run, name="edgeward-uplink", daemon=True)
        self._rejections = RateLimitedLog(log, FAILURE_LOG_INTERVAL)
        self._budget_log = RateLimitedLog(log, FAILURE_LOG_INTERVAL)
        # Wall-clock time since when the budget has held a message back; None while it does not.
        self._held_since: float | None = None

        budget = config.budget
        self._budget = ByteBudget(budget.bytes, budget.period, budget.alert_share)
        if budget.bytes is not None:
            # The budget's window reaches back past this start.
            now = time.time()
            self._budget.seed(
                (now - at, size) for at, size in recent_egress(read_connection, now - budget.period)
            )
        # Rows an earlier run handed to the client but saw no PUBACK for: they
        # go out again, and the broker may have had them already.
        # NOTE: a lower bound. The highest handed id is stored with each
        # sent-mark, so rows handed after the last one before a crash are not
        # counted. Only the receiver can count every duplicate.
        self.resent = unsent_through(read_connection, handed_through(read_connection))

        self.withheld = 0
        self.published = 0
        self.messages = 0
        self.bytes_published = 0
        self.acknowledged = 0
        self.rejected = 0
        self.link = MqttLink(config, device_id, self._on_connected, self._on_publish)

    @property
    def connected(self) -> bool:
        return self.link.connected

    def start(self) -> None:
        self.link.start()
        self._thread.start()

    def notify(self, alerts: bool = False) -> None:
        """Wake the thread: new outbox rows are committed, alerts among them when `alerts` is True."""
        if alerts:
            self._alert_commits += 1
        self._wake.set()

    def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for every committed outbox row to be acknowledged.

        Returns True when a round that began after this call found nothing
        left to publish or waiting for its PUBACK.
        """
        first_round = self._round + 1
        self.notify()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.link.connected:
                return False
            if self._idle_round >= first_round:
                return True
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join()
        self.link.stop()
        # PUBACKs that arrived while the link closed still mark their rows sent.
        self._drain_acks()

    def status(self) -> dict[str, Any]:
        config = self._config
        with self._inflight_lock:
            in_flight = len(self._inflight)
        return {
            "broker": f"{config.host}:{config.port}",
            "connected": self.link.connected,
            "connects": self.link.connects,
            "connect_attempts": self.link.connect_attempts,
            "published": self.published,
            "messages": self.messages,
            "bytes_published": self.bytes_published,
            "acknowledged": self.acknowledged,
            "in_flight": in_flight,
            "resent": self.resent,
            "rejected": self.rejected,
            "withheld": self.withheld,
            "budget": {
                "bytes": config.budget.bytes,
                "period": config.budget.period,
                "alert_share": config.budget.alert_share,
                "used": self._budget.used,
                "holding_since": self._held_since,
            },
            "last_error": self.link.last_error,
        }

    def _on_connected(self, reconnect: bool) -> None:
        if reconnect:
            # paho publishes every unacknowledged message again, flagged DUP.
            with self._inflight_lock:
                self.resent += sum(len(m.outbox_ids) for m in self._inflight.values())
        self._wake.set()

    def _on_publish(self, mid: int, failure: str | None) -> None:
        self._acks.put((mid, failure))
        # Woken once per quarter of the in-flight window, or when every
        # in-flight message is acknowledged: a round per PUBACK cost more
        # than the publishing itself.
        waiting = self._acks.qsize()
        if waiting >= self._ack_batch or waiting >= len(self._inflight):
            self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            # Cleared before looking for work, so a notify() during this round is not lost.
            self._wake.clear()
            self._round += 1
            self._sleep = IDLE_POLL
            self._drain_acks()
            handed = self._publish_round() if self.link.connected else 0
            if handed == 0:
                with self._inflight_lock:
                    empty = not self._inflight
                # A round held back by the budget is not idle: rows still wait.
                if empty and not self._pending and self._sleep == IDLE_POLL:
                    self._idle_round = self._round
                self._wake.wait(self._sleep)

    def _publish_round(self) -> int:
        """Hand alerts, then summaries, to paho while there is room and budget; return how many."""
        if self._retry_at is not None and not self._rewind():
            return 0
        if self._writer.queued > MAX_WRITER_QUEUE:
            self._sleep = WRITER_WAIT
            return 0
        with self._inflight_lock:
            room = self._config.max_inflight - len(self._inflight)
        handed = 0

        commits = self._alert_commits
        alerts = []
        if commits != self._alerts_read and room > 0:
            alerts = unsent_page(self._connection, "alert", self._cursors["alert"], room)
            if len(alerts) < room:
                self._alerts_read = commits
        for row in alerts:
            message = self._message("alert", [row])
            if self._allowed(message):
                wait = self._budget.wait(message.size, alert=True)
                if wait > 0:
                    # Summaries wait behind the alert, so that alerts go first,
                    # and the alert query runs again next round.
                    self._hold(message, wait)
                    self._alerts_read = -1
                    return handed
                self._publish(message)
                room -= 1
            self._cursors["alert"] = row[0]
            handed += 1

        while room > 0:
            if not self._pending and not self._read_summaries():
                break
            message = self._pending[0]
            if not self._allowed(message):
                self._pending.popleft()
                handed += 1
                continue
            wait = self._budget.wait(message.size, alert=False)
            if wait > 0:
                self._hold(message, wait)
                break
            self._held_since = None
            self._pending.popleft()
            self._publish(message)
            room -= 1
            handed += 1
        return handed

    def _read_summaries(self) -> bool:
        """Read the next page of summaries into pending messages; False when none is waiting."""
        rows = unsent_page(
            self._connection, "summary", self._cursors["summary"], self._config.page_size
        )
        if not rows:
            return False
        self._cursors["summary"] = rows[-1][0]

        groups: dict[tuple[str, str, str], list[OutboxRow]] = {}
        for row in rows:
            outbox_id, topic, _, data_class, stream, _ = row
            groups.setdefault((stream, data_class, topic), []).append(row)

        chunks: list[list[OutboxRow]] = []
        for group in groups.values():
            chunk: list[OutboxRow] = []
            size = 0
            for row in group:
                full = len(chunk) >= self._config.batch_max
                if chunk and (full or size + len(row[2]) > self._config.batch_max_bytes):
                    chunks.append(chunk)
                    chunk, size = [], 0
                chunk.append(row)
                size += len(row[2])
            chunks.append(chunk)

        # By first row, so each stream keeps its order and no stream waits behind another's backlog.
        for chunk in sorted(chunks, key=lambda c: c[0][0]):
            self._pending.append(self._message("summary", chunk))
        return True

    def _message(self, kind: str, rows: list[OutboxRow]) -> Message:
        """Build the message for rows of one stream and data class."""
        _, topic, payload, data_class, stream, _ = rows[0]
        if len(rows) > 1:
            payload = batch_payload(self._device_id, stream, [row[2] for row in rows])
        message = Message(
            kind,
            stream,
            data_class,
            topic,
            [row[0] for row in rows],
            [row[5] for row in rows],
            payload,
        )
        if self._config.compression == "zlib" and len(payload) >= self._config.compress_min_bytes:
            packed = zlib.compress(payload, 6)
            if len(packed) < len(payload):
                message.payload = packed
                message.compressed = True
        return message

    def _hold(self, message: Message, wait: float) -> None:
        """Record that the byte budget delays `message` by `wait` seconds, and log it."""
        self._sleep = min(self._sleep, wait)
        if self._held_since is None:
            self._held_since = time.time()
        budget = self._config.budget
        self._budget_log.warning(
            "budget",
            "byte budget of %d bytes per %.0f s reached: %s messages wait in the outbox, the "
            "next for %.1f s (raise mqtt.budget.bytes to send more)",
            budget.bytes,
            budget.period,
            message.kind,
            wait,
        )

    def _allowed(self, message: Message) -> bool:
        """Tell whether the message may leave the device now; if not, mark its rows withheld.

        Checked just before publishing, once per message, so a revocation
        that came in while the message waited in the pending queue counts.
        """
        if self._may_send(message.data_class, message.stream):
            return True
        # These rows stay in the database and never leave the device.
        self.withheld += len(message.outbox_ids)
        self._writer.put(MarkWithheld(message.outbox_ids, time.time()))
        return False

    def _publish(self, message: Message) -> None:
        info = self.link.client.publish(
            message.topic, message.payload, qos=1, properties=self._properties(message)
        )
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.error(
                "paho rejected outbox rows %s: %s; they are retried after a reconnect",
                message.outbox_ids,
                mqtt.error_string(info.rc),
            )
        # With MQTT_ERR_NO_CONN paho keeps the message and sends it on reconnect.
        with self._inflight_lock:
            self._inflight[info.mid] = message
        self._budget.spend(message.size)
        self._handed_max = max(self._handed_max, message.outbox_ids[-1])
        self.messages += 1
        self.published += len(message.outbox_ids)
        self.bytes_published += len(message.payload)

    def _properties(self, message: Message) -> Properties | None:
        if self._config.protocol != "5":
            return None
        expiry = (
            self._config.alert_expiry if message.kind == "alert" else self._config.summary_expiry
        )
        if expiry is None and not message.compressed:
            return None
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if expiry is not None:
            properties.MessageExpiryInterval = int(expiry)
        if message.compressed:
            properties.ContentType = "application/zlib"
        return properties

    def _drain_acks(self) -> None:
        acked: list[int] = []
        records: list[dict[str, Any]] = []
        now = time.time()
        while True:
            try:
                mid, failure = self._acks.get_nowait()
            except queue.Empty:
                break
            with self._inflight_lock:
                message = self._inflight.pop(mid, None)
            if message is None:
                # The retained status messages are not outbox rows.
                continue
            if failure is not None:
                self._reject(message, failure)
                continue
            acked += message.outbox_ids
            # Every message that left the device, and the grants that allowed it.
            records.append(
                {
                    "kind": message.kind,
                    "message_ids": message.message_ids,
                    "stream": message.stream,
                    "data_class": message.data_class,
                    "consent_grants": self._grants(message.data_class, message.stream),
                    "bytes": len(message.payload),
                    "topic": message.topic,
                    "compressed": message.compressed,
                }
            )
        if acked:
            self.acknowledged += len(acked)
            # One chained audit event per round of PUBACKs, listing each message.
            egress = AuditEvent(now, "uplink", "egress", {"messages": records})
            self._writer.put(MarkSent(acked, now, (egress,), self._handed_max))

    def _reject(self, message: Message, failure: str) -> None:
        """Keep rows the broker refused unsent, and retry them after reconnect_max seconds."""
        self.rejected += len(message.outbox_ids)
        self._rejections.warning(
            "rejected",
            "MQTT broker refused %s message on %s: %s; its rows stay in the outbox and are "
            "retried in %.0f s (check the broker's ACL for this topic)",
            message.kind,
            message.topic,
            failure,
            self._config.reconnect_max,
        )
        if self._retry_at is None:
            self._retry_at = time.monotonic() + self._config.reconnect_max

    def _rewind(self) -> bool:
        """After a refused message, start reading the outbox again from its start; True when done."""
        with self._inflight_lock:
            busy = bool(self._inflight)
        assert self._retry_at is not None
        if busy or time.monotonic() < self._retry_at:
            return False
        # Committing the marks first keeps acknowledged rows from being read again.
        self._writer.flush()
        self._cursors = {"alert": 0, "summary": 0}
        self._alert_commits += 1
        self._pending.clear()
        self._retry_at = None
        return True

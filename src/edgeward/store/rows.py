"""Rows the daemon hands to the writer thread."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from edgeward.store.audit import AuditEvent
from edgeward.store.consent import ConsentRecord


@dataclass(frozen=True)
class ResultRow:
    """One window's model result."""

    stream: str
    data_class: str
    ts: float
    model_sha256: str
    label: str | None
    score: float
    anomaly: bool
    # Dequantized outputs as little-endian float64 values.
    outputs: bytes
    raw_output: bytes
    # True when raw_output contains the whole result sealed under a data key,
    # and label, score, anomaly and outputs are blanked.
    sealed: bool = False


@dataclass(frozen=True)
class SummaryRow:
    """One stream's summary of an interval, with the MQTT message that carries it."""

    stream: str
    data_class: str
    seq: int
    period_start: float
    period_end: float
    windows: int
    label_counts: str
    mean_score: float
    max_score: float
    anomalies: int
    model_sha256: str
    created_at: float
    message_id: str
    topic: str
    payload: bytes
    # True when the uplink is disabled: the outbox row is stored as withheld,
    # so it never waits to be sent and retention may prune it.
    local_only: bool = False


@dataclass(frozen=True)
class AlertRow:
    """An anomaly a stream detected, with the MQTT message that carries it."""

    stream: str
    data_class: str
    seq: int
    ts: float
    label: str | None
    score: float
    model_sha256: str
    detected_at: float
    message_id: str
    topic: str
    payload: bytes
    # As SummaryRow.local_only.
    local_only: bool = False


@dataclass(frozen=True)
class MarkSent:
    """Outbox rows the broker acknowledged, with their egress records for the audit log."""

    outbox_ids: list[int]
    sent_at: float
    egress: tuple[AuditEvent, ...] = ()
    # The highest outbox id handed to the MQTT client so far, kept so that a
    # restart can count the rows it may publish twice. 0: unchanged.
    handed_through: int = 0


@dataclass(frozen=True)
class MarkWithheld:
    """Outbox rows that must not leave the device: no consent, or a class kept local."""

    outbox_ids: list[int]
    withheld_at: float


@dataclass
class Barrier:
    """Set once everything queued before it is committed."""

    done: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Erasure:
    """Stored rows of one data class and some streams to delete."""

    data_class: str
    streams: tuple[str, ...]


@dataclass(frozen=True)
class Withdrawal:
    """Unsent outbox rows of one data class and some streams, to keep from leaving the device."""

    data_class: str
    streams: tuple[str, ...]


@dataclass
class LedgerEntry:
    """A consent record, the erasures and withdrawals it causes, and their audit events, committed together.

    `done` is set after the commit; `consent_id`, `erased` and `withdrawn` then hold what was written.
    """

    consent: ConsentRecord | None
    audit: list[AuditEvent]
    erasures: list[Erasure] = field(default_factory=list)
    withdrawals: list[Withdrawal] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    consent_id: int | None = None
    erased: dict[str, int] = field(default_factory=dict)
    withdrawn: dict[str, int] = field(default_factory=dict)

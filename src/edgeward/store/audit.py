"""The tamper-evident audit log: each row's hash covers the previous row's hash.

hash = SHA-256 of the previous hash and the row's canonical JSON
[id, at, actor, event, details]. Editing a row breaks its own hash; deleting
a row breaks the next row's link; deleting the newest rows leaves the
AUTOINCREMENT counter in sqlite_sequence ahead of the last id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

GENESIS_HASH = "0" * 64


@dataclass(frozen=True)
class AuditEvent:
    """One audited action, before it is chained."""

    at: float
    actor: str
    event: str
    details: dict[str, Any]

    def details_json(self) -> str:
        return json.dumps(self.details, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of `audit verify`: rows checked and the first broken one, if any."""

    rows: int
    broken_id: int | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.broken_id is None and self.reason is None


def chain_hash(prev_hash: str, row_id: int, at: float, actor: str, event: str, details: str) -> str:
    body = json.dumps([row_id, at, actor, event, details], separators=(",", ":"))
    return hashlib.sha256(f"{prev_hash}\n{body}".encode()).hexdigest()


def insert_event(connection: Any, head: tuple[int, str], event: AuditEvent) -> tuple[int, str]:
    """Insert one event after `head` (last id, last hash); return the new head."""
    row_id = head[0] + 1
    details = event.details_json()
    digest = chain_hash(head[1], row_id, event.at, event.actor, event.event, details)
    connection.execute(
        "INSERT INTO audit_log (id, at, actor, event, details, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (row_id, event.at, event.actor, event.event, details, head[1], digest),
    )
    return row_id, digest


def read_head(connection: Any) -> tuple[int, str]:
    """Return the newest row's (id, hash), or (0, GENESIS_HASH) for an empty log."""
    row = connection.execute("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1").fetchone()
    return (row[0], row[1]) if row else (0, GENESIS_HASH)


def verify_chain(connection: Any) -> VerifyResult:
    """Walk the log in id order and report the first row that breaks the chain."""
    previous_hash = GENESIS_HASH
    previous_id = 0
    rows = 0
    cursor = connection.execute(
        "SELECT id, at, actor, event, details, prev_hash, hash FROM audit_log ORDER BY id"
    )
    for row_id, at, actor, event, details, prev_hash, digest in cursor:
        rows += 1
        if row_id != previous_id + 1 or prev_hash != previous_hash:
            return VerifyResult(
                rows,
                row_id,
                f"row {row_id} does not follow row {previous_id}: a row before it was deleted or changed",
            )
        if chain_hash(prev_hash, row_id, at, actor, event, details) != digest:
            return VerifyResult(
                rows,
                row_id,
                f"row {row_id} was changed after it was written: its hash does not match",
            )
        previous_hash = digest
        previous_id = row_id

    sequence = connection.execute(
        "SELECT seq FROM sqlite_sequence WHERE name = 'audit_log'"
    ).fetchone()
    if sequence is not None and sequence[0] > previous_id:
        return VerifyResult(
            rows,
            previous_id + 1,
            f"rows {previous_id + 1} to {sequence[0]} were deleted from the end of the log",
        )
    return VerifyResult(rows)

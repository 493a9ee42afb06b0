"""The consent ledger's rules, free of I/O.

The ledger is append-only: each record grants or revokes one purpose for one
subject, over a set of data classes. The state at a given time comes from
folding the records in order: for each (subject, purpose, data class) the
latest record wins, and a grant counts only until its expiry. A revocation
with no data classes revokes the purpose for every class.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Action = Literal["grant", "revoke"]


@dataclass(frozen=True)
class ConsentRecord:
    """One grant or revocation, with the fields of a consent receipt."""

    subject: str
    purpose: str
    data_classes: tuple[str, ...]
    action: Action
    recorded_at: float
    expires_at: float | None = None
    # "uid:<n>" for a local user, "config" for grants listed in the config file.
    actor: str = "config"
    method: str = "config"
    # SHA-256 of the policy text the subject agreed to, when one was given.
    policy_sha256: str | None = None
    id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "subject": self.subject,
            "purpose": self.purpose,
            "data_classes": list(self.data_classes),
            "action": self.action,
            "recorded_at": self.recorded_at,
            "expires_at": self.expires_at,
            "actor": self.actor,
            "method": self.method,
            "policy_sha256": self.policy_sha256,
        }


@dataclass
class ConsentState:
    """The grants in force, folded from the ledger's records in order."""

    # (subject, purpose, data class) -> the grant in force, if any.
    grants: dict[tuple[str, str, str], ConsentRecord] = field(default_factory=dict)

    @classmethod
    def from_records(cls, records: list[ConsentRecord]) -> ConsentState:
        state = cls()
        for record in records:
            state.apply(record)
        return state

    def apply(self, record: ConsentRecord) -> None:
        """Fold one more record into the state."""
        if record.action == "grant":
            for data_class in record.data_classes:
                self.grants[(record.subject, record.purpose, data_class)] = record
            return
        for key in list(self.grants):
            subject, purpose, data_class = key
            if subject != record.subject or purpose != record.purpose:
                continue
            if not record.data_classes or data_class in record.data_classes:
                del self.grants[key]

    def grant_for(
        self, subject: str, purpose: str, data_class: str, now: float
    ) -> ConsentRecord | None:
        """Return the grant that allows this use now, or None."""
        grant = self.grants.get((subject, purpose, data_class))
        if grant is None:
            return None
        if grant.expires_at is not None and now >= grant.expires_at:
            return None
        return grant

    def missing_purpose(
        self, subject: str, purposes: list[str], data_class: str, now: float
    ) -> str | None:
        """Return the first purpose without a grant in force, or None when all are granted."""
        for purpose in purposes:
            if self.grant_for(subject, purpose, data_class, now) is None:
                return purpose
        return None

    def in_force(self, now: float) -> list[ConsentRecord]:
        """Return the grants in force, each narrowed to the classes it still covers."""
        classes: dict[int, list[str]] = {}
        records: dict[int, ConsentRecord] = {}
        for key, record in self.grants.items():
            if self.grant_for(*key, now) is not None:
                records[id(record)] = record
                classes.setdefault(id(record), []).append(key[2])
        return [
            replace(record, data_classes=tuple(sorted(classes[ident])))
            for ident, record in records.items()
        ]


def classes_json(data_classes: tuple[str, ...]) -> str:
    return json.dumps(sorted(data_classes))

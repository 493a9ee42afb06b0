"""The consent ledger as the daemon uses it: validated writes, and answers from memory.

Every grant and revocation goes through the writer thread, in one
transaction with its audit event and any erasure it causes. After the commit
the in-memory state is updated, so a revocation takes effect for ingest and
sync as soon as the command returns. Expiry needs no update: each check
compares the grant's expiry with the current time.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from edgeward.config.schema import Config
from edgeward.errors import ConsentError, StoreError
from edgeward.security.keystore import KeyStore, scope_name
from edgeward.store.audit import AuditEvent
from edgeward.store.consent import Action, ConsentRecord, ConsentState
from edgeward.store.rows import Erasure, LedgerEntry, Withdrawal
from edgeward.store.writer import Writer

log = logging.getLogger(__name__)

COMMIT_TIMEOUT = 30.0


def load_records(connection: Any, subject: str | None = None) -> list[ConsentRecord]:
    """Read ledger records in order, all or one subject's."""
    sql = (
        "SELECT id, subject, purpose, data_classes, action, recorded_at, expires_at, actor, method,"
        " policy_sha256 FROM consents"
    )
    params: tuple[Any, ...] = ()
    if subject is not None:
        sql += " WHERE subject = ?"
        params = (subject,)
    rows = connection.execute(sql + " ORDER BY id", params).fetchall()
    return [
        ConsentRecord(
            id=r[0],
            subject=r[1],
            purpose=r[2],
            data_classes=tuple(json.loads(r[3])),
            action=r[4],
            recorded_at=r[5],
            expires_at=r[6],
            actor=r[7],
            method=r[8],
            policy_sha256=r[9],
        )
        for r in rows
    ]


class ConsentLedger:
    """Check and record consent for the daemon's configured subjects, purposes and classes."""

    def __init__(
        self, config: Config, writer: Writer, read_connection: Any, keystore: KeyStore | None = None
    ) -> None:
        self._config = config
        self._keystore = keystore
        self._writer = writer
        self._connection = read_connection
        self._lock = threading.Lock()
        self._state = ConsentState.from_records(load_records(read_connection))

    def missing_purpose(
        self, subject: str, data_class: str, now: float | None = None
    ) -> str | None:
        """Return a purpose that `data_class` needs and `subject` has not granted, or None."""
        purposes = self._config.data_classes[data_class].purposes
        if not purposes:
            return None
        with self._lock:
            return self._state.missing_purpose(subject, purposes, data_class, now or time.time())

    def grant_for(self, subject: str, purpose: str, data_class: str) -> ConsentRecord | None:
        with self._lock:
            return self._state.grant_for(subject, purpose, data_class, time.time())

    def in_force(self) -> list[ConsentRecord]:
        with self._lock:
            return self._state.in_force(time.time())

    def history(self, subject: str | None = None) -> list[ConsentRecord]:
        if subject is not None:
            self._check_subject(subject)
        with self._lock:
            return load_records(self._connection, subject)

    def record(
        self,
        action: Action,
        subject: str,
        purpose: str,
        data_classes: list[str],
        actor: str,
        method: str = "cli",
        expires_at: float | None = None,
        policy_sha256: str | None = None,
    ) -> tuple[ConsentRecord, dict[str, int], dict[str, int]]:
        """Validate, commit and apply one grant or revocation.

        Returns the committed record, the stored rows it erased per class, and
        the unsent messages it withdrew from the outbox per class.
        """
        self._check_subject(subject)
        classes = self._check_classes(purpose, data_classes, action)
        now = time.time()
        if expires_at is not None and expires_at <= now:
            raise ConsentError(f"expiry {expires_at} is in the past; give a future time or none")

        record = ConsentRecord(
            subject=subject,
            purpose=purpose,
            data_classes=tuple(classes),
            action=action,
            recorded_at=now,
            expires_at=expires_at,
            actor=actor,
            method=method,
            policy_sha256=policy_sha256,
        )
        erasures = self._erasures(record) if action == "revoke" else []
        withdrawals = self._withdrawals(record) if action == "revoke" else []
        event = AuditEvent(now, actor, f"consent.{action}", {"record": record.to_json()})
        entry = LedgerEntry(record, [event], erasures, withdrawals)
        self._writer.put(entry)
        if not entry.done.wait(COMMIT_TIMEOUT):
            raise StoreError(
                f"the consent {action} was not committed within {COMMIT_TIMEOUT:.0f} s; check the daemon's log"
            )

        self._destroy_keys(record.subject, erasures)
        committed = ConsentRecord(**{**record.__dict__, "id": entry.consent_id})
        with self._lock:
            self._state.apply(committed)
        log.info(
            "consent %s: subject %s, purpose %s, classes %s, by %s",
            action,
            subject,
            purpose,
            ", ".join(classes),
            actor,
        )
        if any(entry.withdrawn.values()):
            log.info(
                "consent revoke: withdrew unsent messages from the outbox: %s", entry.withdrawn
            )
        return committed, entry.erased, entry.withdrawn

    def erase(
        self, subject: str, data_classes: list[str], actor: str
    ) -> tuple[dict[str, int], list[str]]:
        """Delete a subject's stored rows of these classes (all when empty) and destroy their data keys."""
        self._check_subject(subject)
        for name in data_classes:
            if name not in self._config.data_classes:
                names = ", ".join(sorted(self._config.data_classes))
                raise ConsentError(f"unknown data class {name!r}; configured classes: {names}")
        classes = data_classes or sorted(self._config.data_classes)
        streams = tuple(s.name for s in self._config.streams if s.subject == subject)
        erasures = [Erasure(name, streams) for name in classes] if streams else []
        details: dict[str, Any] = {"subject": subject, "data_classes": classes}
        entry = LedgerEntry(
            None, [AuditEvent(time.time(), actor, "erase.subject", details)], erasures
        )
        self._writer.put(entry)
        if not entry.done.wait(COMMIT_TIMEOUT):
            raise StoreError(
                f"the erasure was not committed within {COMMIT_TIMEOUT:.0f} s; check the daemon's log"
            )
        destroyed = self._destroy_keys(subject, [Erasure(name, streams) for name in classes])
        log.info("erased subject %s: rows %s, data keys %s", subject, entry.erased, destroyed)
        return entry.erased, destroyed

    def _destroy_keys(self, subject: str, erasures: list[Erasure]) -> list[str]:
        """Destroy the data keys of these classes for the subject; return the classes that had one."""
        if self._keystore is None or not erasures:
            return []
        scopes = {
            scope_name(erasure.data_class, subject): erasure.data_class for erasure in erasures
        }
        return [scopes[scope] for scope in self._keystore.destroy(list(scopes))]

    def reconfigure(self, config: Config) -> None:
        """Use a reloaded config's classes, purposes and subjects, and record its new grants."""
        self._config = config
        self.apply_config_grants()

    def apply_config_grants(self) -> None:
        """Record the config file's grants that are not in force yet, with actor "config"."""
        for grant in self._config.consents:
            classes = self._check_classes(grant.purpose, grant.data_classes, "grant")
            missing = [
                c for c in classes if self.grant_for(grant.subject, grant.purpose, c) is None
            ]
            if missing:
                self.record("grant", grant.subject, grant.purpose, missing, "config", "config")

    def _check_subject(self, subject: str) -> None:
        known = self._config.known_subjects()
        if subject not in known:
            names = ", ".join(sorted(known)) or "none"
            raise ConsentError(
                f"unknown subject {subject!r}; known subjects: {names} (add it under 'subjects:')"
            )

    def _check_classes(self, purpose: str, data_classes: list[str], action: Action) -> list[str]:
        if purpose not in self._config.purposes:
            names = ", ".join(sorted(self._config.purposes)) or "none"
            raise ConsentError(f"unknown purpose {purpose!r}; configured purposes: {names}")
        for name in data_classes:
            if name not in self._config.data_classes:
                names = ", ".join(sorted(self._config.data_classes))
                raise ConsentError(f"unknown data class {name!r}; configured classes: {names}")
        if data_classes:
            return list(data_classes)
        needing = [n for n, c in self._config.data_classes.items() if purpose in c.purposes]
        if not needing and action == "grant":
            raise ConsentError(
                f"no data class needs purpose {purpose!r}; name the classes with --class"
            )
        return needing

    def _withdrawals(self, record: ConsentRecord) -> list[Withdrawal]:
        """Unsent outbox rows of the revoked classes, which must not leave the device any more."""
        streams = tuple(s.name for s in self._config.streams if s.subject == record.subject)
        if not streams:
            return []
        return [
            Withdrawal(name, streams)
            for name in record.data_classes
            if record.purpose in self._config.data_classes[name].purposes
        ]

    def _erasures(self, record: ConsentRecord) -> list[Erasure]:
        streams = tuple(s.name for s in self._config.streams if s.subject == record.subject)
        if not streams:
            return []
        return [
            Erasure(name, streams)
            for name in record.data_classes
            if self._config.data_classes[name].erase_on_revoke
        ]

"""Database schema and its ordered migrations.

MIGRATIONS[i] takes a database from version i to i + 1. Opening an older
database applies the missing steps in one transaction; a newer one is
rejected, because this program cannot know what the newer schema means.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlcipher3

from edgeward.errors import SchemaError

log = logging.getLogger(__name__)

MIGRATIONS: list[str] = [
    """
    CREATE TABLE results (
        id INTEGER PRIMARY KEY,
        stream TEXT NOT NULL,
        data_class TEXT NOT NULL,
        ts REAL NOT NULL,
        model_sha256 TEXT NOT NULL,
        label TEXT,
        score REAL NOT NULL,
        anomaly INTEGER NOT NULL,
        outputs BLOB NOT NULL,
        raw_output BLOB NOT NULL
    );
    CREATE INDEX results_stream_ts ON results (stream, ts);
    CREATE INDEX results_ts ON results (ts);

    CREATE TABLE summaries (
        id INTEGER PRIMARY KEY,
        stream TEXT NOT NULL,
        data_class TEXT NOT NULL,
        seq INTEGER NOT NULL,
        period_start REAL NOT NULL,
        period_end REAL NOT NULL,
        windows INTEGER NOT NULL,
        label_counts TEXT NOT NULL,
        mean_score REAL NOT NULL,
        max_score REAL NOT NULL,
        anomalies INTEGER NOT NULL,
        model_sha256 TEXT NOT NULL,
        created_at REAL NOT NULL,
        UNIQUE (stream, seq)
    );
    CREATE INDEX summaries_period ON summaries (period_start);

    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        summary_id INTEGER NOT NULL REFERENCES summaries (id),
        message_id TEXT NOT NULL UNIQUE,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        created_at REAL NOT NULL,
        sent_at REAL
    );
    CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
    """,
    # 2: the consent ledger, the audit log, withheld outbox rows, and the
    # commit time of results, which retention counts from, and whether a
    # result's payload is sealed under a data key (the restricted tier).
    """
    CREATE TABLE consents (
        id INTEGER PRIMARY KEY,
        subject TEXT NOT NULL,
        purpose TEXT NOT NULL,
        data_classes TEXT NOT NULL,
        action TEXT NOT NULL CHECK (action IN ('grant', 'revoke')),
        recorded_at REAL NOT NULL,
        expires_at REAL,
        actor TEXT NOT NULL,
        method TEXT NOT NULL,
        policy_sha256 TEXT
    );
    CREATE TRIGGER consents_no_update BEFORE UPDATE ON consents
    BEGIN
        SELECT RAISE(ABORT, 'the consent ledger is append-only');
    END;
    CREATE TRIGGER consents_no_delete BEFORE DELETE ON consents
    BEGIN
        SELECT RAISE(ABORT, 'the consent ledger is append-only');
    END;

    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        event TEXT NOT NULL,
        details TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );

    ALTER TABLE outbox ADD COLUMN withheld_at REAL;
    ALTER TABLE results ADD COLUMN stored_at REAL;
    ALTER TABLE results ADD COLUMN sealed INTEGER NOT NULL DEFAULT 0;
    DROP INDEX outbox_unsent;
    CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL AND withheld_at IS NULL;
    """,
    # 3: alerts, and an outbox that carries both kinds of message. The
    # outbox now names each row's stream and data class, so the uplink and a
    # revocation find them without a join, and a row points at a summary or
    # an alert. SQLite cannot drop a NOT NULL constraint in place, so the
    # table is copied.
    """
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY,
        stream TEXT NOT NULL,
        data_class TEXT NOT NULL,
        seq INTEGER NOT NULL,
        ts REAL NOT NULL,
        label TEXT,
        score REAL NOT NULL,
        model_sha256 TEXT NOT NULL,
        detected_at REAL NOT NULL,
        UNIQUE (stream, seq)
    );
    CREATE INDEX alerts_ts ON alerts (ts);

    CREATE TABLE outbox_new (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('alert', 'summary')),
        summary_id INTEGER REFERENCES summaries (id),
        alert_id INTEGER REFERENCES alerts (id),
        stream TEXT NOT NULL,
        data_class TEXT NOT NULL,
        message_id TEXT NOT NULL UNIQUE,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        created_at REAL NOT NULL,
        sent_at REAL,
        withheld_at REAL
    );
    INSERT INTO outbox_new (id, kind, summary_id, stream, data_class, message_id, topic, payload,
                            created_at, sent_at, withheld_at)
        SELECT o.id, 'summary', o.summary_id, s.stream, s.data_class, o.message_id, o.topic,
               o.payload, o.created_at, o.sent_at, o.withheld_at
        FROM outbox o JOIN summaries s ON s.id = o.summary_id;
    DROP TABLE outbox;
    ALTER TABLE outbox_new RENAME TO outbox;
    CREATE INDEX outbox_unsent ON outbox (kind, id) WHERE sent_at IS NULL AND withheld_at IS NULL;
    CREATE INDEX outbox_summary ON outbox (summary_id);
    CREATE INDEX outbox_withheld ON outbox (id) WHERE withheld_at IS NOT NULL;

    -- Highest outbox id handed to the MQTT client in an earlier run: rows at
    -- or below it that are still unsent may reach the broker twice.
    CREATE TABLE uplink_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        handed_through INTEGER NOT NULL
    );
    INSERT INTO uplink_state (id, handed_through) VALUES (1, 0);
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def split_statements(script: str) -> list[str]:
    """Split a script into statements; a trigger's body keeps its inner semicolons."""
    statements = []
    buffer = ""
    for part in script.split(";"):
        buffer += part + ";"
        if sqlcipher3.complete_statement(buffer):
            if buffer.strip(" \n;"):
                statements.append(buffer.strip())
            buffer = ""
    return statements


def migrate(connection: Any, path: str) -> None:
    """Bring the schema to SCHEMA_VERSION in one transaction."""
    connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = connection.execute("SELECT version FROM schema_version").fetchone()
    current = row[0] if row else 0

    if current > SCHEMA_VERSION:
        raise SchemaError(
            f"database {path} has schema version {current}, newer than this edgeward "
            f"({SCHEMA_VERSION}); upgrade edgeward, or restore a database made by this version"
        )
    if current == SCHEMA_VERSION:
        return

    log.info("migrating database %s from schema version %d to %d", path, current, SCHEMA_VERSION)
    connection.execute("BEGIN IMMEDIATE")
    try:
        for step in MIGRATIONS[current:]:
            for statement in split_statements(step):
                connection.execute(statement)
        connection.execute("DELETE FROM schema_version")
        connection.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise

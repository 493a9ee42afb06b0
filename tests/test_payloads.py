"""The summary payload against its JSON Schema, and the de-duplicating receiver."""

from __future__ import annotations

import json
import sys
import zlib
from pathlib import Path

import jsonschema
from referencing import Registry, Resource

from edgeward.agent.payloads import alert_payload, batch_payload, new_message_id, summary_payload
from edgeward.agent.summaries import Summary

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))

from receiver import Deduplicator, unpack  # noqa: E402

SCHEMA = json.loads((REPO / "docs" / "summary.schema.json").read_text())
ALERT_SCHEMA = json.loads((REPO / "docs" / "alert.schema.json").read_text())
BATCH_SCHEMA = json.loads((REPO / "docs" / "batch.schema.json").read_text())


def payload(seq: int, windows: int = 3, message_id: str | None = None) -> dict[str, object]:
    summary = Summary(
        "pump-1", 0.0, 60.0, windows, {"normal": windows}, 1.5, 0.9 if windows else float("-inf"), 0
    )
    data = summary_payload(
        summary, "device-1", "summary", seq, message_id or new_message_id(), "ab" * 32
    )
    body: dict[str, object] = json.loads(data)
    return body


def test_summary_payload_matches_schema() -> None:
    jsonschema.validate(payload(1), SCHEMA)


def test_empty_interval_payload_matches_schema() -> None:
    body = payload(2, windows=0)
    jsonschema.validate(body, SCHEMA)
    assert body["max_score"] is None


def test_deduplicator_drops_repeats_and_counts_gaps() -> None:
    deduplicator = Deduplicator()
    first, second, fourth = payload(1), payload(2), payload(4)
    accepted = [deduplicator.accept(m) for m in (first, second, dict(second), fourth)]
    assert accepted == [True, True, False, True]
    assert deduplicator.duplicates == 1
    assert deduplicator.gaps == 1


def test_alert_payload_matches_schema() -> None:
    data = alert_payload(
        "device-1", "pump-1", "summary", 1, new_message_id(), 60.0, "anomaly", 0.97, "ab" * 32, 61.0
    )
    jsonschema.validate(json.loads(data), ALERT_SCHEMA)


def test_batch_payload_matches_schema_and_unpacks() -> None:
    items = [json.dumps(payload(seq), separators=(",", ":")).encode() for seq in (1, 2, 3)]
    data = batch_payload("device-1", "pump-1", items)
    registry = Registry().with_resource("edgeward/v1/summary", Resource.from_contents(SCHEMA))
    jsonschema.Draft202012Validator(BATCH_SCHEMA, registry=registry).validate(json.loads(data))
    assert [item["seq"] for item in unpack(data)] == [1, 2, 3]
    assert [item["seq"] for item in unpack(zlib.compress(data))] == [1, 2, 3]

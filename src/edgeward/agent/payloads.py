"""MQTT topics and payloads of the uplink.

Summary and alert payloads are versioned JSON. `message_id` is unique per
message and `seq` increases by one per stream and kind, so a receiver can
drop the duplicates that QoS 1 (at-least-once) delivery allows and notice a
gap. A batch carries several summaries of one stream, each whole. A message
may be zlib-compressed: JSON starts with '{' and a zlib stream with 0x78.
"""

from __future__ import annotations

import json
import uuid

from edgeward.agent.summaries import Summary

PAYLOAD_VERSION = 1


def summary_topic(prefix: str, device_id: str, stream: str) -> str:
    return f"{prefix}/{device_id}/summary/{stream}"


def alert_topic(prefix: str, device_id: str, stream: str) -> str:
    return f"{prefix}/{device_id}/alert/{stream}"


def status_topic(prefix: str, device_id: str) -> str:
    return f"{prefix}/{device_id}/status"


def new_message_id() -> str:
    return uuid.uuid4().hex


def summary_payload(
    summary: Summary, device_id: str, data_class: str, seq: int, message_id: str, model_sha256: str
) -> bytes:
    body = {
        "v": PAYLOAD_VERSION,
        "type": "summary",
        "message_id": message_id,
        "device_id": device_id,
        "stream": summary.stream,
        "data_class": data_class,
        "seq": seq,
        "period_start": summary.period_start,
        "period_end": summary.period_end,
        "windows": summary.windows,
        "label_counts": summary.label_counts,
        "mean_score": summary.mean_score,
        "max_score": summary.max_score if summary.windows else None,
        "anomalies": summary.anomalies,
        "model_sha256": model_sha256,
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def alert_payload(
    device_id: str,
    stream: str,
    data_class: str,
    seq: int,
    message_id: str,
    ts: float,
    label: str | None,
    score: float,
    model_sha256: str,
    detected_at: float,
) -> bytes:
    body = {
        "v": PAYLOAD_VERSION,
        "type": "alert",
        "message_id": message_id,
        "device_id": device_id,
        "stream": stream,
        "data_class": data_class,
        "seq": seq,
        "ts": ts,
        "label": label,
        "score": score,
        "model_sha256": model_sha256,
        "detected_at": detected_at,
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def batch_payload(device_id: str, stream: str, items: list[bytes]) -> bytes:
    """Wrap several stored summary payloads, unchanged, in one batch message."""
    head = json.dumps(
        {"v": PAYLOAD_VERSION, "type": "batch", "device_id": device_id, "stream": stream},
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    # The stored payloads are JSON objects already, so they are joined as they are.
    return head[:-1] + b',"items":[' + b",".join(items) + b"]}"

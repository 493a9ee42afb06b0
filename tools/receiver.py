"""A receiver of edgeward summaries and alerts that drops the repeats of at-least-once delivery.

Run: python tools/receiver.py --host BROKER --port 1883 [--topic 'edgeward/v1/+/summary/#']

QoS 1 may deliver a message more than once (after a reconnect, or when the
device restarts before it saw the PUBACK). A receiver keeps the message ids
it has seen and drops repeats; the per-stream seq shows gaps and order.
A message may be zlib-compressed and may be a batch of summaries; unpack()
returns the summaries or alert inside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from collections import OrderedDict
from typing import Any


def unpack(payload: bytes) -> list[dict[str, Any]]:
    """Return the summaries or alert one MQTT message carries, in order."""
    if payload[:1] == b"\x78":
        # JSON starts with '{'; a zlib stream starts with 0x78.
        payload = zlib.decompress(payload)
    body: dict[str, Any] = json.loads(payload)
    if body.get("type") == "batch":
        items: list[dict[str, Any]] = body["items"]
        return items
    return [body]


class Deduplicator:
    """Accept each message id once; remember the last `capacity` ids and each stream's last seq."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity
        # (device, stream, "summary" or "alert") -> the highest seq accepted.
        self.last_seq: dict[tuple[str, str, str], int] = {}
        self.duplicates = 0
        self.gaps = 0

    def accept(self, message: dict[str, Any]) -> bool:
        """Return True for a message not seen before, and note gaps in its stream's seq."""
        message_id = message["message_id"]
        if message_id in self._seen:
            self.duplicates += 1
            return False
        self._seen[message_id] = None
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)

        key = (message["device_id"], message["stream"], message["type"])
        previous = self.last_seq.get(key)
        if previous is not None and message["seq"] != previous + 1:
            self.gaps += 1
        self.last_seq[key] = max(message["seq"], previous or 0)
        return True


def main() -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    parser = argparse.ArgumentParser(description="Print each edgeward summary and alert once.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--topic", action="append", help="MQTT topic filter; repeat for several")
    parser.add_argument(
        "--client-id",
        default="edgeward-receiver",
        help="MQTT client id of this receiver's persistent session; give each copy its own",
    )
    arguments = parser.parse_args()
    topics = arguments.topic or ["edgeward/v1/+/summary/#", "edgeward/v1/+/alert/#"]

    deduplicator = Deduplicator()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=arguments.client_id, clean_session=False
    )

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        for body in unpack(message.payload):
            gaps = deduplicator.gaps
            if deduplicator.accept(body):
                print(json.dumps(body, sort_keys=True), flush=True)
            else:
                print(f"duplicate dropped: {body['message_id']}", file=sys.stderr, flush=True)
            if deduplicator.gaps > gaps:
                print(
                    f"gap or reordering before {body['type']} seq {body['seq']} of stream "
                    f"{body['stream']} from {body['device_id']}",
                    file=sys.stderr,
                    flush=True,
                )

    client.on_connect = lambda c, u, f, rc, p: c.subscribe([(topic, 1) for topic in topics])
    client.on_message = on_message
    client.connect(arguments.host, arguments.port)
    client.loop_forever()


if __name__ == "__main__":
    main()

"""A receiver of edgeward summaries that drops the repeats of at-least-once delivery.

Run: python tools/receiver.py --host BROKER --port 1883 [--topic 'edgeward/v1/+/summary/#']

QoS 1 may deliver a message more than once (after a reconnect, or when the
device restarts before it saw the PUBACK). A receiver keeps the message ids
it has seen and drops repeats; the per-stream seq shows gaps and order.
"""

from __future__ import annotations

import argparse
import json
from collections import OrderedDict
from typing import Any


class Deduplicator:
    """Accept each message id once; remember the last `capacity` ids and each stream's last seq."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity
        self.last_seq: dict[tuple[str, str], int] = {}
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

        key = (message["device_id"], message["stream"])
        previous = self.last_seq.get(key)
        if previous is not None and message["seq"] != previous + 1:
            self.gaps += 1
        self.last_seq[key] = max(message["seq"], previous or 0)
        return True


def main() -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    parser = argparse.ArgumentParser(description="Print each edgeward summary once.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--topic", default="edgeward/v1/+/summary/#")
    arguments = parser.parse_args()

    deduplicator = Deduplicator()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="edgeward-receiver", clean_session=False
    )

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        body = json.loads(message.payload)
        if deduplicator.accept(body):
            print(json.dumps(body, sort_keys=True), flush=True)

    client.on_connect = lambda c, u, f, rc, p: c.subscribe(arguments.topic, qos=1)
    client.on_message = on_message
    client.connect(arguments.host, arguments.port)
    client.loop_forever()


if __name__ == "__main__":
    main()

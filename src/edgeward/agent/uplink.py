"""MQTT uplink: publish the outbox with QoS 1 and mark rows sent on their PUBACK.

Store-and-forward: a summary is in the outbox before it is published, and its
row is marked sent only when the broker acknowledges it. paho re-sends
in-flight messages after a reconnect; rows never handed to paho, or left
unacknowledged when the daemon stopped, are published again on the next
start. A receiver drops duplicates by message_id.

paho calls on_publish while holding its own lock, so the callback only queues
the message id; this thread maps ids to rows.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeward.agent.payloads import status_topic
from edgeward.config.schema import MqttConfig
from edgeward.errors import ConfigError
from edgeward.ratelimit import RateLimitedLog
from edgeward.store.audit import AuditEvent
from edgeward.store.queries import unsent_page
from edgeward.store.rows import MarkSent, MarkWithheld
from edgeward.store.writer import Writer

log = logging.getLogger(__name__)

IDLE_POLL = 0.5
FAILURE_LOG_INTERVAL = 60.0
SESSION_EXPIRY = 7 * 86400


def diagnose_connection(config: MqttConfig, timeout: float = 5.0) -> str:
    """Open a TCP (and TLS) connection like paho's and return why it fails, in words."""
    try:
        sock = socket.create_connection((config.host, config.port), timeout=timeout)
    except OSError as error:
        return error.strerror or str(error)
    try:
        if config.tls is not None:
            context = ssl.create_default_context(
                cafile=str(config.tls.ca_file) if config.tls.ca_file else None
            )
            if config.tls.cert_file:
                context.load_cert_chain(
                    str(config.tls.cert_file),
                    str(config.tls.key_file) if config.tls.key_file else None,
                )
            with context.wrap_socket(sock, server_hostname=config.host):
                pass
    except ssl.SSLCertVerificationError as error:
        return (
            f"the broker's certificate failed verification ({error.verify_message}); "
            "check mqtt.tls.ca_file"
        )
    except (OSError, ssl.SSLError) as error:
        reason = getattr(error, "reason", None) or str(error)
        return f"TLS handshake failed: {reason}; check the mqtt.tls files"
    finally:
        sock.close()
    return "the TCP and TLS connection succeed, so the broker refused the MQTT session"


def read_password(config: MqttConfig) -> str | None:
    """Read the broker password from its file or systemd credential; None when neither is set."""
    path = config.password_file
    if config.password_credential is not None:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if directory is None:
            raise ConfigError(
                "mqtt.password_credential is set but $CREDENTIALS_DIRECTORY is not; run under systemd "
                "with LoadCredential=, or use mqtt.password_file"
            )
        path = Path(directory) / config.password_credential
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").rstrip("\n")
    except OSError as error:
        raise ConfigError(
            f"mqtt.password_file {path} could not be read: {error.strerror}"
        ) from error


class Uplink:
    """Own the MQTT client and the thread that drains the outbox."""

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
        self._status_topic = status_topic(config.topic_prefix, device_id)
        # (data class, stream) -> whether its rows may leave the device now.
        self._may_send = may_send or (lambda data_class, stream: True)
        self._grants = grants or (lambda data_class, stream: [])
        self._egress: dict[int, dict[str, Any]] = {}
        self.withheld = 0

        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._inflight: dict[int, int] = {}
        self._last_handed = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgeward-uplink", daemon=True)

        self.connected = False
        self.last_error: str | None = None
        self.published = 0
        self.bytes_published = 0
        self.acknowledged = 0
        self.connects = 0
        self._failures = RateLimitedLog(log, FAILURE_LOG_INTERVAL)
        self._diagnosed_at = 0.0
        self._client = self._make_client()

    def start(self) -> None:
        config = self._config
        log.info("connecting to MQTT broker %s:%d as %s", config.host, config.port, self._client_id)
        properties = None
        if config.protocol == "5":
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = SESSION_EXPIRY
            self._client.connect_async(
                config.host, config.port, config.keepalive, clean_start=False, properties=properties
            )
        else:
            self._client.connect_async(config.host, config.port, config.keepalive)
        self._client.loop_start()
        self._thread.start()

    def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for every outbox row to be acknowledged; True when none is left."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.connected:
                return False
            if not self._inflight and not unsent_page(self._connection, self._last_handed, 1):
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join()
        self._drain_acks()
        if self.connected:
            info = self._client.publish(
                self._status_topic, self._status_payload("offline"), qos=1, retain=True
            )
            info.wait_for_publish(timeout=2.0)
        self._client.disconnect()
        self._client.loop_stop()

    def status(self) -> dict[str, Any]:
        return {
            "broker": f"{self._config.host}:{self._config.port}",
            "connected": self.connected,
            "connects": self.connects,
            "published": self.published,
            "bytes_published": self.bytes_published,
            "acknowledged": self.acknowledged,
            "in_flight": len(self._inflight),
            "withheld": self.withheld,
            "last_error": self.last_error,
        }

    @property
    def _client_id(self) -> str:
        return self._config.client_id or self._device_id

    def _make_client(self) -> mqtt.Client:
        config = self._config
        protocol = mqtt.MQTTv5 if config.protocol == "5" else mqtt.MQTTv311
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=protocol,
            clean_session=False if protocol == mqtt.MQTTv311 else None,
        )
        client.max_inflight_messages_set(config.max_inflight)
        client.reconnect_delay_set(
            int(max(1, config.reconnect_min)), int(max(1, config.reconnect_max))
        )
        client.will_set(self._status_topic, self._status_payload("offline"), qos=1, retain=True)
        if config.username is not None:
            client.username_pw_set(config.username, read_password(config))
        if config.tls is not None:
            client.tls_set(
                ca_certs=str(config.tls.ca_file) if config.tls.ca_file else None,
                certfile=str(config.tls.cert_file) if config.tls.cert_file else None,
                keyfile=str(config.tls.key_file) if config.tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    def _status_payload(self, state: str) -> bytes:
        return json.dumps(
            {"device_id": self._device_id, "state": state, "ts": time.time()}
        ).encode()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            self.connected = False
            self.last_error = f"connection refused: {reason}"
            log.error(
                "MQTT broker %s:%d refused the connection: %s",
                self._config.host,
                self._config.port,
                reason,
            )
            return
        sock = client.socket()
        if isinstance(sock, socket.socket):
            # Nagle's algorithm delays small QoS 1 messages by tens of milliseconds.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connected = True
        self.connects += 1
        self.last_error = None
        log.info("connected to MQTT broker %s:%d", self._config.host, self._config.port)
        client.publish(self._status_topic, self._status_payload("online"), qos=1, retain=True)
        self._wake.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self.connected = False
        # paho does not pass the cause, so it is found again, at most once a minute.
        now = time.monotonic()
        if now - self._diagnosed_at >= FAILURE_LOG_INTERVAL or self.last_error is None:
            self._diagnosed_at = now
            self.last_error = f"cannot connect: {diagnose_connection(self._config)}"
        self._failures.warning(
            "connect",
            "MQTT broker %s:%d: %s; summaries wait in the outbox and paho keeps retrying",
            self._config.host,
            self._config.port,
            self.last_error,
        )

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        was_connected = self.connected
        self.connected = False
        if not self._stop.is_set():
            self.last_error = f"disconnected: {reason}"
            if was_connected:
                log.warning("lost the MQTT broker connection (%s); reconnecting", reason)

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        self._acks.put(mid)
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._drain_acks()
            handed = 0
            if self.connected and len(self._inflight) < self._config.max_inflight:
                handed = self._publish_page()
            if handed == 0:
                self._wake.wait(IDLE_POLL)
                self._wake.clear()

    def _publish_page(self) -> int:
        room = min(self._config.page_size, self._config.max_inflight - len(self._inflight))
        rows = unsent_page(self._connection, self._last_handed, room)
        handed = 0
        withheld = []
        for outbox_id, topic, payload, data_class, stream, message_id in rows:
            if not self._may_send(data_class, stream):
                withheld.append(outbox_id)
                self._last_handed = outbox_id
                handed += 1
                continue
            info = self._client.publish(topic, payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                # Not connected after all: paho keeps the message queued and sends
                # it on reconnect, so it counts as handed over.
                log.debug("publish of outbox row %d queued by paho (rc %d)", outbox_id, info.rc)
            self._inflight[info.mid] = outbox_id
            self._egress[info.mid] = {
                "message_id": message_id,
                "stream": stream,
                "data_class": data_class,
                "consent_grants": self._grants(data_class, stream),
                "bytes": len(payload),
                "topic": topic,
            }
            self._last_handed = outbox_id
            self.published += 1
            self.bytes_published += len(payload)
            handed += 1
        if withheld:
            # These rows stay in the database and never leave the device.
            self.withheld += len(withheld)
            self._writer.put(MarkWithheld(withheld, time.time()))
        return handed

    def _drain_acks(self) -> None:
        acked = []
        egress = []
        now = time.time()
        while True:
            try:
                mid = self._acks.get_nowait()
            except queue.Empty:
                break
            outbox_id = self._inflight.pop(mid, None)
            details = self._egress.pop(mid, None)
            if outbox_id is not None:
                acked.append(outbox_id)
            if details is not None:
                # Every message that left the device, and the grants that allowed it.
                egress.append(AuditEvent(now, "uplink", "egress.summary", details))
        if acked:
            self.acknowledged += len(acked)
            self._writer.put(MarkSent(acked, now, tuple(egress)))

"""The MQTT connection: the paho client, its network thread, and reconnects with backoff.

paho's own loop_start() reconnects with a doubling delay but no jitter, so a
fleet that lost its broker would reconnect in step. This thread runs paho's
loop() itself and waits a random time between half and all of the capped
exponential delay before each attempt. The delay starts again from
reconnect_min after a CONNACK that accepts the session.
"""

from __future__ import annotations

import json
import logging
import os
import random
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

log = logging.getLogger(__name__)

FAILURE_LOG_INTERVAL = 60.0
SESSION_EXPIRY = 7 * 86400
LOOP_TIMEOUT = 1.0


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


def describe_connect_error(error: Exception) -> str:
    """Say in words why opening the broker connection failed, and what to check."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return (
            f"the broker's certificate failed verification ({error.verify_message}); "
            "check mqtt.tls.ca_file"
        )
    if isinstance(error, ssl.SSLError):
        reason = error.reason or str(error)
        return f"TLS handshake failed: {reason}; check the mqtt.tls files"
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return str(error)


def backoff_delay(attempt: int, low: float, high: float) -> float:
    """Return the wait before reconnect attempt `attempt` (0 first): capped exponential, with jitter."""
    ceiling = min(high, low * 2 ** min(attempt, 32))
    return random.uniform(ceiling / 2, ceiling)


class MqttLink:
    """Own the paho client and the thread that connects, reconnects and runs its network loop."""

    def __init__(
        self,
        config: MqttConfig,
        device_id: str,
        on_connected: Callable[[bool], None],
        on_publish: Callable[[int, str | None], None],
    ) -> None:
        self._config = config
        self._device_id = device_id
        self._status_topic = status_topic(config.topic_prefix, device_id)
        self._on_connected = on_connected
        self._on_publish = on_publish

        self.connected = False
        self.connects = 0
        self.connect_attempts = 0
        self.last_error: str | None = None
        self._attempt = 0
        self._closing = threading.Event()
        self._failures = RateLimitedLog(log, FAILURE_LOG_INTERVAL)
        self.client = self._make_client()
        self._thread = threading.Thread(target=self._run, name="edgeward-mqtt", daemon=True)

    @property
    def client_id(self) -> str:
        return self._config.client_id or self._device_id

    def start(self) -> None:
        config = self._config
        log.info("connecting to MQTT broker %s:%d as %s", config.host, config.port, self.client_id)
        if config.protocol == "5":
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = SESSION_EXPIRY
            self.client.connect_async(
                config.host, config.port, config.keepalive, clean_start=False, properties=properties
            )
        else:
            self.client.connect_async(config.host, config.port, config.keepalive)
        self._thread.start()

    def stop(self) -> None:
        """Publish the offline status when connected, then disconnect and end the thread."""
        if self.connected:
            info = self.client.publish(
                self._status_topic, self._status_payload("offline"), qos=1, retain=True
            )
            info.wait_for_publish(timeout=2.0)
        self._closing.set()
        self.client.disconnect()
        self._thread.join()

    def _make_client(self) -> mqtt.Client:
        config = self._config
        protocol = mqtt.MQTTv5 if config.protocol == "5" else mqtt.MQTTv311
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=protocol,
            clean_session=False if protocol == mqtt.MQTTv311 else None,
            reconnect_on_failure=False,
        )
        client.max_inflight_messages_set(config.max_inflight)
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
        # Without loop_start(), paho's publish() writes to the socket from the
        # calling thread while this link's thread may be writing too, and two
        # threads popping the send queue can put packets on the wire out of
        # order. A write callback, even one that does nothing, makes publish()
        # only queue the packet and wake loop(), so one thread does all writes.
        client.on_socket_register_write = lambda client, userdata, sock: None
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_publish = self._handle_publish
        return client

    def _status_payload(self, state: str) -> bytes:
        return json.dumps(
            {"device_id": self._device_id, "state": state, "ts": time.time()}
        ).encode()

    def _run(self) -> None:
        while not self._closing.is_set():
            self.connect_attempts += 1
            try:
                self.client.reconnect()
            except (OSError, ssl.SSLError) as error:
                self._connect_failed(describe_connect_error(error))
                self._wait_before_retry()
                continue

            result = mqtt.MQTT_ERR_SUCCESS
            while result == mqtt.MQTT_ERR_SUCCESS and not self._closing.is_set():
                result = self.client.loop(LOOP_TIMEOUT)
            if self._closing.is_set():
                break
            if self.connected:
                # paho returned an error without calling on_disconnect first.
                self._handle_disconnect(self.client, None, None, result, None)
            self._wait_before_retry()

    def _wait_before_retry(self) -> None:
        delay = backoff_delay(self._attempt, self._config.reconnect_min, self._config.reconnect_max)
        self._attempt += 1
        self._closing.wait(delay)

    def _connect_failed(self, reason: str) -> None:
        self.connected = False
        self.last_error = f"cannot connect: {reason}"
        self._failures.warning(
            "connect",
            "MQTT broker %s:%d: %s; messages wait in the outbox, retrying",
            self._config.host,
            self._config.port,
            self.last_error,
        )

    def _handle_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            # A refused CONNACK: bad credentials, a banned client id, and so on.
            self.connected = False
            self.last_error = f"connection refused: {reason}"
            self._failures.warning(
                "refused",
                "MQTT broker %s:%d refused the connection: %s; check mqtt.username, the password "
                "and mqtt.client_id",
                self._config.host,
                self._config.port,
                reason,
            )
            return
        sock = client.socket()
        if isinstance(sock, socket.socket):
            # Nagle's algorithm delays small QoS 1 messages by tens of milliseconds.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._attempt = 0
        self.connected = True
        self.connects += 1
        self.last_error = None
        log.info(
            "connected to MQTT broker %s:%d (session present: %s)",
            self._config.host,
            self._config.port,
            bool(flags.session_present),
        )
        client.publish(self._status_topic, self._status_payload("online"), qos=1, retain=True)
        self._on_connected(self.connects > 1)

    def _handle_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        was_connected = self.connected
        self.connected = False
        # After a refused CONNACK paho reports a disconnect too; the refusal is the error to keep.
        if self._closing.is_set() or not was_connected:
            return
        self.last_error = f"disconnected: {reason}"
        # paho reports a connection the broker closed, or one that broke, as "Unspecified error".
        log.warning(
            "lost the MQTT broker connection: the broker closed it or the network failed "
            "(paho: %s); reconnecting",
            reason,
        )

    def _handle_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        # An MQTT 5 PUBACK can carry a failure code, such as "Not authorized", for a rejected message.
        failure = str(reason) if reason is not None and reason.is_failure else None
        self._on_publish(mid, failure)

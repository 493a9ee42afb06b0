"""The daemon's wiring: start the parts in order, stop them in reverse.

Start: load models, open the database, start the writer, the streams, the
uplink and the API, then tell systemd READY=1. Stop (SIGTERM, SIGINT, the
end of every replay with --until-done, or --duration): stop the sources,
let each stream flush its open summary, commit everything queued, then close.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

from edgeward import __version__
from edgeward.agent import systemd
from edgeward.agent.api import ApiServer
from edgeward.agent.consent_api import consent_routes
from edgeward.agent.export_api import export_routes
from edgeward.agent.inference import Model
from edgeward.agent.runtime import resolve_runtime
from edgeward.agent.sources import source_channels
from edgeward.agent.stream import StreamWorker
from edgeward.agent.uplink import Uplink
from edgeward.config import load_config
from edgeward.config.schema import Config, StreamConfig
from edgeward.config.validate import check_config
from edgeward.errors import ConfigError, ShapeMismatchError
from edgeward.security.keys import DATABASE_KEY_INFO, derive_key, load_master_key, master_key_path
from edgeward.security.keystore import KeyStore, scope_name
from edgeward.security.roles import role_of
from edgeward.security.rotation import resolve_master_key
from edgeward.store.audit import AuditEvent, verify_chain
from edgeward.store.database import open_database
from edgeward.store.ledger import ConsentLedger
from edgeward.store.lock import DatabaseLock
from edgeward.store.queries import count_rows, integrity_problems, last_sequences
from edgeward.store.reserve import RESERVE_BYTES, DiskReserve
from edgeward.store.retention import TIER_ORDER, Pruner
from edgeward.store.rows import LedgerEntry
from edgeward.store.sealed import unseal_result
from edgeward.store.writer import Writer

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RELOAD_SIGNAL = signal.SIGHUP
# Routes that need more than the reader role.
ROUTE_ROLES = {
    "POST /v1/consents": "operator",
    "GET /v1/consents/history": "operator",
    "GET /v1/export": "operator",
    "GET /v1/audit/verify": "operator",
    "GET /v1/store/check": "operator",
    "POST /v1/erase": "admin",
}
# Seconds each shutdown step may wait for a stuck part (a full disk, say).
STOP_TIMEOUT = 10.0
HEALTH_TIMEOUT = 30.0


def load_models(config: Config) -> list[Model]:
    """Load and check every stream's model; raise ConfigError naming the stream and model."""
    runtime = resolve_runtime(config.runtime.tflite)
    models = []
    for index, stream in enumerate(config.streams):
        key = config.where(f"streams[{index}].model.path")
        try:
            model = Model(stream.model, runtime, stream.normalize, config.runtime.threads)
            model.check_window(stream.window.size, source_channels(stream.source))
        except ShapeMismatchError as error:
            raise ConfigError(
                f"{config.where(f'streams[{index}].window')}: stream {stream.name}: {error}"
            ) from error
        except ConfigError as error:
            raise type(error)(f"{key}: stream {stream.name}: {error}") from error
        models.append(model)
    return models


@dataclass
class RunOptions:
    """How long to run: until a signal, for a duration, or until every replay ends."""

    duration: float | None = None
    until_done: bool = False


class Daemon:
    """The running daemon. Construct, then call run()."""

    def __init__(self, config: Config, options: RunOptions | None = None) -> None:
        self.config = config
        self.options = options or RunOptions()
        self._stop = threading.Event()
        self._started_at = time.time()
        self.workers: list[StreamWorker] = []
        self.writer: Writer | None = None
        self.uplink: Uplink | None = None
        self.api: ApiServer | None = None
        self._connections: list[Any] = []
        self._status_connection: Any = None
        self._lock: DatabaseLock | None = None
        self.ledger: ConsentLedger | None = None
        self.pruner: Pruner | None = None
        self.keystore: KeyStore | None = None
        self._status_lock = threading.Lock()
        self._key = b""
        self._uplink_connection: Any = None
        self._reload_requested = threading.Event()

    def run(self) -> int:
        """Start everything, wait for a stop request, stop everything. Returns the exit code."""
        check_config(self.config)
        models = load_models(self.config)
        self._install_signal_handlers()
        try:
            self._start(models)
            systemd.notify("READY=1")
            log.info("edgeward %s running with %d streams", __version__, len(self.workers))
            self._wait()
        finally:
            systemd.notify("STOPPING=1")
            complete = self._shutdown()
        return 0 if complete else 1

    def request_stop(self) -> None:
        self._stop.set()

    def status(self) -> dict[str, Any]:
        counts: dict[str, Any] = {}
        if self._status_connection is not None:
            # API handler threads call this at the same time; one connection, one user.
            with self._status_lock:
                counts = count_rows(self._status_connection)
            oldest = counts.get("outbox_oldest_unsent")
            counts["outbox_oldest_unsent_age"] = time.time() - oldest if oldest else None
        writer = self.writer
        return {
            "version": __version__,
            "device_id": self.config.device_id,
            "pid": os.getpid(),
            "uptime": time.time() - self._started_at,
            "database": str(self.config.database.path),
            "streams": {w.name: w.status() for w in self.workers},
            "store": {
                **counts,
                "writer_queue": writer.queued if writer else 0,
                "committed_results": writer.counters.results if writer else 0,
                "committed_summaries": writer.counters.summaries if writer else 0,
                "failed_transactions": writer.counters.failed_transactions if writer else 0,
                "last_write_error": writer.last_error if writer else None,
                "degraded": writer.degraded if writer else False,
                "dropped_disk_full": dict(writer.counters.dropped_disk_full) if writer else {},
                "freed_disk_full": dict(writer.counters.freed_disk_full) if writer else {},
                "disk_budget": self.config.database.disk_budget,
                "retention_deleted": dict(self.pruner.deleted) if self.pruner else {},
            },
            "mqtt": self._uplink_status(),
        }

    def _start(self, models: list[Model]) -> None:
        config = self.config
        key_path = master_key_path(config.database.key_file, config.database.key_credential)
        if config.database.key_credential is None:
            load_master_key(key_path, create=config.database.create_key)
            master = resolve_master_key(key_path, config.database.path)
        else:
            master = load_master_key(key_path)
        key = derive_key(master, DATABASE_KEY_INFO)
        self._key = key

        self._lock = DatabaseLock(config.database.path)
        self._lock.acquire()
        write_connection = open_database(config.database.path, key, writer=True)
        self._connections.append(write_connection)
        # Read before the writer thread owns the connection.
        sequences = last_sequences(write_connection)
        alert_sequences = last_sequences(write_connection, "alerts")
        tiers = {name: TIER_ORDER.index(c.tier) for name, c in config.data_classes.items()}
        self.writer = Writer(
            write_connection,
            config.database.batch_size,
            config.database.batch_interval,
            tiers=tiers,
            reserve=DiskReserve(
                config.database.path.with_name(config.database.path.name + ".reserve"),
                RESERVE_BYTES,
            ),
        )
        self.writer.start()

        keystore_path = config.database.path.with_name(config.database.path.name + ".keys")
        self.keystore = KeyStore(keystore_path, master)
        ledger_connection = self._reader(key)
        self.ledger = ConsentLedger(config, self.writer, ledger_connection, self.keystore)
        self.ledger.apply_config_grants()
        for stream, model in zip(config.streams, models, strict=True):
            self.workers.append(self._new_worker(config, stream, model, sequences, alert_sequences))

        self.pruner = Pruner(config, self.writer, self._reader(key), threading.Lock())
        self.pruner.start()

        self._status_connection = self._reader(key)
        self.api = ApiServer(
            config.api.socket,
            self._reader(key),
            self.status,
            config.api.socket_mode,
            config.api.request_timeout,
            config.api.max_request_bytes,
            streams=lambda: [stream.name for stream in self.config.streams],
            unsealer=self._unseal,
            audit_read=self._audit_restricted_read,
            role_of=lambda uid, gid: role_of(self.config.api, uid, gid),
            may_read=self._may_read,
        )
        audit_connection = self._reader(key)
        audit_lock = threading.Lock()
        self.api.add_routes(
            consent_routes(
                self.ledger,
                lambda: verify_chain(audit_connection),
                audit_lock,
                lambda: integrity_problems(audit_connection),
            ),
            ROUTE_ROLES,
        )
        self.api.add_routes(
            export_routes(
                lambda: self.config, self.ledger, self.writer, self._reader(key), threading.Lock()
            ),
            ROUTE_ROLES,
        )
        self.api.start()

        self._start_uplink()
        for worker in self.workers:
            worker.start()

    def _start_uplink(self) -> None:
        config = self.config
        if not config.mqtt.enabled or self.writer is None:
            return
        self._uplink_connection = self._reader(self._key)
        self.uplink = Uplink(
            config.mqtt,
            config.device_id,
            self._uplink_connection,
            self.writer,
            self._may_send,
            self._grant_ids,
        )
        self.writer.on_outbox = self.uplink.notify
        self.uplink.start()

    def _stop_uplink(self) -> None:
        if self.uplink is None or self.writer is None:
            return
        self.writer.on_outbox = None
        self.uplink.stop()
        self.uplink = None
        # Unacknowledged rows stay in the outbox; the next uplink sends them.
        self._connections.remove(self._uplink_connection)
        self._uplink_connection.close()
        self._uplink_connection = None

    def reload(self) -> bool:
        """Read the config file again and apply it; keep the running config when the new one is bad.

        Streams whose settings, model file and the settings they share are
        unchanged keep running, so a replay is not started over. The others
        stop, flush their open summary interval and start again, and the
        uplink starts again with the new broker settings. Unsent rows stay
        queued in the outbox throughout. Returns True when the new config
        was applied.
        """
        path = self.config.source_file
        if path is None:
            log.warning("reload requested, but the configuration was not read from a file")
            return False
        systemd.notify("RELOADING=1")
        try:
            new = load_config(path)
            check_config(new)
            self._check_reloadable(new)
            models = load_models(new)
        except ConfigError as error:
            log.error("reload of %s rejected; the running configuration stays:\n%s", path, error)
            systemd.notify("READY=1")
            return False
        self._apply(new, models)
        systemd.notify("READY=1")
        log.info("reloaded %s: %d streams", path, len(self.workers))
        return True

    def _check_reloadable(self, new: Config) -> None:
        old = self.config
        changed = [
            key
            for key, before, after in (
                ("database", old.database, new.database),
                ("api.socket", old.api.socket, new.api.socket),
                ("api.socket_mode", old.api.socket_mode, new.api.socket_mode),
            )
            if before != after
        ]
        if changed:
            raise ConfigError(
                f"{', '.join(changed)} cannot change while the daemon runs; "
                "restart it (systemctl restart edgeward) to apply them"
            )

    def _apply(self, new: Config, models: list[Model]) -> None:
        assert self.writer is not None and self.ledger is not None
        old = self.config
        shared_changed = (
            new.device_id != old.device_id
            or new.summaries != old.summaries
            or new.mqtt.topic_prefix != old.mqtt.topic_prefix
            or new.runtime != old.runtime
        )
        running = {worker.name: worker for worker in self.workers}
        kept: dict[str, StreamWorker] = {}
        for stream, model in zip(new.streams, models, strict=True):
            worker = running.get(stream.name)
            if worker is not None and not shared_changed and _same_stream(worker, stream, model):
                kept[stream.name] = worker
        stopping = [worker for name, worker in running.items() if name not in kept]
        for worker in stopping:
            worker.request_stop()
        for worker in stopping:
            worker.join(STOP_TIMEOUT)
        self._stop_uplink()
        self.writer.flush(STOP_TIMEOUT)

        self.config = new
        self.ledger.reconfigure(new)
        if self.pruner is not None:
            self.pruner.reconfigure(new)
        with self._status_lock:
            sequences = last_sequences(self._status_connection)
            alert_sequences = last_sequences(self._status_connection, "alerts")
        workers = []
        started = []
        for stream, model in zip(new.streams, models, strict=True):
            if stream.name in kept:
                workers.append(kept[stream.name])
                continue
            worker = self._new_worker(new, stream, model, sequences, alert_sequences)
            workers.append(worker)
            started.append(worker)
        self.workers = workers
        self._start_uplink()
        for worker in started:
            worker.start()
        log.info(
            "reload: %d streams kept running, %d started, %d stopped",
            len(kept),
            len(started),
            len(stopping),
        )

    def _new_worker(
        self,
        config: Config,
        stream: StreamConfig,
        model: Model,
        sequences: dict[str, int],
        alert_sequences: dict[str, int],
    ) -> StreamWorker:
        """Build a stream's worker that continues its stored summary and alert sequences."""
        assert self.writer is not None
        return StreamWorker(
            config,
            stream,
            model,
            self.writer,
            sequences.get(stream.name, 0),
            self.ledger,
            self.keystore,
            alert_sequences.get(stream.name, 0),
        )

    def _uplink_status(self) -> dict[str, Any]:
        if self.uplink is not None:
            return self.uplink.status()
        # The API serves requests before the uplink exists, while the daemon starts.
        return {"enabled": self.config.mqtt.enabled, "connected": False}

    def _subject_of(self, stream: str) -> str:
        return next((s.subject for s in self.config.streams if s.name == stream), "device")

    def _unseal(self, data_class: str, stream: str, blob: bytes) -> dict[str, Any] | None:
        if (
            self.keystore is None
            or self.ledger is None
            or data_class not in self.config.data_classes
        ):
            return None
        subject = self._subject_of(stream)
        # Restricted data is served only while its purposes are granted.
        if self.ledger.missing_purpose(subject, data_class) is not None:
            return None
        key = self.keystore.existing_key(scope_name(data_class, subject))
        return unseal_result(key, data_class, stream, blob)

    def _audit_restricted_read(self, uid: int | None, streams: list[str], rows: int) -> None:
        if self.writer is None:
            return
        actor = f"uid:{uid}" if uid is not None else "uid:unknown"
        event = AuditEvent(
            time.time(), actor, "read.restricted", {"streams": streams, "rows": rows}
        )
        self.writer.put(LedgerEntry(None, [event]))

    def _may_read(self, role: str | None, data_class: str) -> bool:
        class_config = self.config.data_classes.get(data_class)
        if class_config is None:
            return role == "admin"
        return role in class_config.readers

    def _grant_ids(self, data_class: str, stream: str) -> list[int]:
        """Return the ids of the consent grants that allow this class of this stream to leave."""
        class_config = self.config.data_classes.get(data_class)
        if class_config is None or self.ledger is None:
            return []
        subject = self._subject_of(stream)
        grants = [
            self.ledger.grant_for(subject, purpose, data_class) for purpose in class_config.purposes
        ]
        return [grant.id for grant in grants if grant is not None and grant.id is not None]

    def _may_send(self, data_class: str, stream: str) -> bool:
        """Tell whether rows of this class and stream may leave the device now."""
        class_config = self.config.data_classes.get(data_class)
        if class_config is None or not class_config.may_leave_device or self.ledger is None:
            return False
        return self.ledger.missing_purpose(self._subject_of(stream), data_class) is None

    def _reader(self, key: bytes) -> Any:
        connection = open_database(self.config.database.path, key)
        self._connections.append(connection)
        return connection

    def _wait(self) -> None:
        deadline = time.monotonic() + self.options.duration if self.options.duration else None
        ping_every = systemd.watchdog_interval()
        tick = min(1.0, ping_every) if ping_every else 1.0

        while not self._stop.wait(tick):
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                self.reload()
            if ping_every and self._healthy():
                systemd.notify("WATCHDOG=1")
            if deadline is not None and time.monotonic() >= deadline:
                log.info("run time of %.0f s is over; stopping", self.options.duration)
                return
            if self.options.until_done and all(w.finished.is_set() for w in self.workers):
                log.info("every source has ended; stopping")
                return
        log.info("stop requested; draining queues")

    def _healthy(self) -> bool:
        # The watchdog is fed only while the writer thread is alive and
        # looping, so a hung writer gets the service restarted. A writer that
        # retries on a full disk still loops, and the daemon stays up.
        return self.writer is not None and self.writer.alive(max_silence=HEALTH_TIMEOUT)

    def _shutdown(self) -> bool:
        """Stop in reverse order; return False when some results could not be committed."""
        for worker in self.workers:
            worker.request_stop()
        for worker in self.workers:
            # A worker blocked on a full writer queue is released below, when
            # the writer commits or gives up.
            worker.join(STOP_TIMEOUT)
        if self.pruner is not None:
            self.pruner.stop()
        if self.writer is not None:
            self.writer.flush(STOP_TIMEOUT)
        if self.uplink is not None:
            # Give the last summaries a short chance to leave; whatever is
            # left stays in the outbox for the next start.
            drained = self.uplink.drain(self.config.mqtt.drain_timeout)
            self.uplink.stop()
            if not drained and self._status_connection is not None:
                with self._status_lock:
                    left = count_rows(self._status_connection)["outbox_backlog"]
                log.info("%d messages stay in the outbox and go out after the next start", left)
        if self.api is not None:
            self.api.stop()

        complete = True
        if self.writer is not None:
            complete = self.writer.stop(STOP_TIMEOUT)
            log.info(
                "committed %d results and %d summaries",
                self.writer.counters.results,
                self.writer.counters.summaries,
            )
        for worker in self.workers:
            worker.join()
        for connection in reversed(self._connections):
            connection.close()
        if self._lock is not None:
            self._lock.release()
        return complete

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in STOP_SIGNALS:
            signal.signal(signum, lambda number, frame: self._stop.set())
        # The main loop reloads within a second; a handler must not do the work itself.
        signal.signal(RELOAD_SIGNAL, lambda number, frame: self._reload_requested.set())


def _same_stream(worker: StreamWorker, stream: StreamConfig, model: Model) -> bool:
    """Tell whether a running worker already runs this stream config with this model file."""
    return worker.stream == stream and worker.model.sha256 == model.sha256

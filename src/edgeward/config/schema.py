"""Typed configuration model.

Each dataclass is one YAML mapping. Field names are the YAML keys; the
loader rejects keys that are not fields here. Defaults live here and only
here. Durations accept seconds as a number or a string such as "90s",
"10m" or "2h".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

# A float field marked as a duration also accepts "90s", "10m", "2h" or "1d".
Duration = Annotated[float, "duration"]


@dataclass
class DatabaseConfig:
    """The encrypted SQLCipher database and its writer."""

    path: Path = Path("/var/lib/edgeward/edgeward.db")
    key_file: Path = Path("/etc/edgeward/master.key")
    # Name of a systemd credential holding the master key; when set, the key is
    # read from $CREDENTIALS_DIRECTORY/<name> instead of key_file.
    key_credential: str | None = None
    # Create a missing key file (mode 0600). Meant for demos and tests only:
    # a production device gets its key at install time.
    create_key: bool = False
    batch_size: int = 256
    batch_interval: Duration = 0.2
    # Bytes of database pages the store may use; over it, the lowest tier's
    # oldest rows are pruned first. Unset: no budget.
    disk_budget: int | None = None
    prune_interval: Duration = 60.0


@dataclass
class RoleMembers:
    """The members of a role: user names or uids, group names or gids."""

    users: list[str | int] = field(default_factory=list)
    groups: list[str | int] = field(default_factory=list)


def default_roles() -> dict[str, RoleMembers]:
    return {
        "reader": RoleMembers(groups=["edgeward"]),
        "operator": RoleMembers(),
        "admin": RoleMembers(),
    }


@dataclass
class ApiConfig:
    """The local HTTP/JSON API on a Unix socket."""

    socket: Path = Path("/run/edgeward/api.sock")
    # reader, operator or admin -> members. Root and the daemon's own user are admin.
    roles: dict[str, RoleMembers] = field(default_factory=default_roles)
    socket_mode: int = 0o660
    max_request_bytes: int = 65536
    request_timeout: Duration = 5.0


@dataclass
class TlsConfig:
    """TLS to the broker. The server certificate is always verified against ca_file."""

    ca_file: Path | None = None
    # A client certificate and its key, for brokers that require one.
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass
class BudgetConfig:
    """A cap on the bytes the uplink publishes in any window of `period` seconds."""

    # Payload and topic bytes per period; MQTT, TCP and TLS framing is not counted.
    bytes: int | None = None
    period: Duration = 3600.0
    # Fraction of the budget that only alerts may use, so that a summary
    # backlog cannot use up the whole budget and hold back an alert.
    alert_share: float = 0.1


@dataclass
class MqttConfig:
    """The uplink broker."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str | None = None
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive: int = 30
    topic_prefix: str = "edgeward/v1"
    max_inflight: int = 20
    page_size: int = 100
    reconnect_min: Duration = 1.0
    reconnect_max: Duration = 60.0
    # At shutdown, how long to wait for unsent summaries to be acknowledged.
    drain_timeout: Duration = 3.0
    username: str | None = None
    # The password is read from a file (or a systemd credential), never written in this file.
    password_file: Path | None = None
    password_credential: str | None = None
    tls: TlsConfig | None = None
    # Up to this many waiting summaries of one stream go out in one message.
    batch_max: int = 20
    batch_max_bytes: int = 65536
    # zlib-compress messages of at least compress_min_bytes when that makes them smaller.
    compression: Literal["none", "zlib"] = "none"
    compress_min_bytes: int = 512
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    # MQTT 5 message expiry: the broker drops a message it could not deliver
    # within this time. Unset: no expiry.
    summary_expiry: Duration | None = None
    alert_expiry: Duration | None = None


@dataclass
class RuntimeConfig:
    """The TFLite runtime choice."""

    tflite: Literal["auto", "litert", "tflite-runtime"] = "auto"
    threads: int = 1


@dataclass
class DataClassConfig:
    """A class of stored data and the rules that apply to it."""

    tier: Literal["public", "internal", "confidential", "restricted"] = "internal"
    retention: Duration = 30 * 86400.0
    may_leave_device: bool = False
    # Consent purposes that the stream's subject must have granted for this
    # class before its data is stored or synced. Empty: no consent needed.
    purposes: list[str] = field(default_factory=list)
    # Delete the class's stored rows of a subject when it revokes a purpose.
    erase_on_revoke: bool = False
    # Fraction of database.disk_budget this class may fill before its own
    # oldest rows are pruned first. Unset: no share of its own.
    budget_share: float | None = None
    # API roles that may read this class's rows.
    readers: list[Literal["reader", "operator", "admin"]] = field(
        default_factory=lambda: ["reader", "operator", "admin"]
    )


@dataclass
class PurposeConfig:
    """A purpose that subjects can grant consent for."""

    description: str = ""


@dataclass
class ConsentGrantConfig:
    """A grant recorded in the consent ledger at start, with actor "config"."""

    subject: str = ""
    purpose: str = ""
    data_classes: list[str] = field(default_factory=list)


@dataclass
class SyntheticSourceConfig:
    """The deterministic synthetic signal with injected anomalies."""

    type: Literal["synthetic"] = "synthetic"
    seed: int = 1
    channels: int = 3
    rate_hz: float = 50.0
    anomaly_rate: float = 0.002
    # Stop after this many samples; unset runs until the daemon stops.
    samples: int | None = None
    playback: Literal["realtime", "fast"] = "realtime"


@dataclass
class ReplaySourceConfig:
    """A CSV or JSON Lines file, or several played in order, replayed as a sensor."""

    type: Literal["csv", "jsonl"] = "csv"
    path: list[Path] = field(default_factory=list)
    # Value columns: header names, or 0-based indexes for files without a header.
    columns: list[str | int] = field(default_factory=list)
    header: bool = True
    delimiter: str = ","
    time_column: str | int | None = None
    # strptime format of the time column; unset means seconds since the epoch.
    time_format: str | None = None
    # Sample rate used to make timestamps when there is no time column: they
    # start at the time the file is opened and advance by 1 / rate_hz.
    rate_hz: float = 1.0
    playback: Literal["fast", "realtime"] = "fast"
    speed: float = 1.0
    loop: bool = False


SourceConfig = SyntheticSourceConfig | ReplaySourceConfig


@dataclass
class WindowConfig:
    """Window size and hop, in samples."""

    size: int = 32
    hop: int = 16


@dataclass
class NormalizeConfig:
    """Scaling applied to each sample before quantization: (x - mean) / std."""

    mean: float | list[float] = 0.0
    std: float | list[float] = 1.0


@dataclass
class ModelConfig:
    """A TFLite model and how its output is read."""

    path: Path = Path()
    kind: Literal["classifier", "autoencoder", "regression"] = "classifier"
    labels: list[str] = field(default_factory=list)
    # A window is an anomaly when its label is in anomaly_labels, or, for
    # autoencoder and regression models, when its score is above threshold.
    anomaly_labels: list[str] = field(default_factory=list)
    threshold: float | None = None
    # "quantize": values are real numbers, quantized with the input tensor's
    # scale and zero point. "raw": values are already in the tensor's dtype.
    input: Literal["quantize", "raw"] = "quantize"


@dataclass
class BadInputConfig:
    """A stream's policy for bad sensor input. Every case is counted."""

    # Missing, NaN or infinite values.
    missing: Literal["skip", "fill_previous", "fill_zero"] = "skip"
    # A timestamp equal to or earlier than the previous sample's.
    time_regression: Literal["skip", "keep"] = "skip"
    log_interval: Duration = 60.0


@dataclass
class StreamConfig:
    """One sensor stream: where samples come from and which model reads them."""

    name: str = ""
    source: SourceConfig = field(default_factory=SyntheticSourceConfig)
    window: WindowConfig = field(default_factory=WindowConfig)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data_class: str = "inference"
    summary_class: str = "summary"
    # Whose data this stream records, for consent checks.
    subject: str = "device"
    # Anomalous windows raise an alert, published before any waiting summary.
    # At most one alert per alert_interval seconds of the stream's own time.
    alerts: bool = True
    alert_class: str | None = None
    alert_interval: Duration = 60.0
    bad_input: BadInputConfig = field(default_factory=BadInputConfig)


@dataclass
class SummaryConfig:
    """Summary settings."""

    # Length of a summary interval, in the stream's own time.
    interval: Duration = 60.0


def default_data_classes() -> dict[str, DataClassConfig]:
    return {
        "raw": DataClassConfig(tier="restricted", retention=7 * 86400.0),
        "inference": DataClassConfig(tier="internal", retention=30 * 86400.0),
        "summary": DataClassConfig(tier="internal", retention=90 * 86400.0, may_leave_device=True),
    }


@dataclass
class Config:
    """The whole daemon configuration."""

    device_id: str = ""
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    summaries: SummaryConfig = field(default_factory=SummaryConfig)
    data_classes: dict[str, DataClassConfig] = field(default_factory=default_data_classes)
    purposes: dict[str, PurposeConfig] = field(default_factory=dict)
    # Consent subjects besides the streams' own.
    subjects: list[str] = field(default_factory=list)
    consents: list[ConsentGrantConfig] = field(default_factory=list)
    streams: list[StreamConfig] = field(default_factory=list)
    # Where each key path was found in the file, as "line:column", for
    # errors found after loading (a model that fails to load, say).
    locations: dict[str, str] = field(default_factory=dict, repr=False)
    source_file: Path | None = None

    def known_subjects(self) -> set[str]:
        return {*self.subjects, *(stream.subject for stream in self.streams)}

    def where(self, key_path: str) -> str:
        """Format a key path with its file position for an error message."""
        location = self.locations.get(key_path)
        if location is None:
            return key_path
        return f"{key_path} (line {location})"

"""Checks across fields and against the file system, after the YAML is type-checked."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from edgeward.agent.replay import parse_time, unquote
from edgeward.agent.sources import source_channels
from edgeward.config.schema import Config, ReplaySourceConfig, StreamConfig
from edgeward.errors import ConfigError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# A host name, an IPv4 address or an IPv6 address without brackets.
HOST = re.compile(r"^(?:[A-Za-z0-9_.-]+|[0-9A-Fa-f:]+)$")


def check_config(config: Config) -> None:
    """Raise ConfigError listing every problem that needs no model to be loaded."""
    problems: list[str] = []
    where = config.where

    if not NAME.match(config.device_id):
        problems.append(
            f"{where('device_id')}: invalid device id {config.device_id!r}; use 1 to 64 letters, "
            "digits, '_', '.' or '-', starting with a letter or digit"
        )
    if not config.streams:
        problems.append("streams: no stream is configured; add at least one under 'streams:'")
    if not 1 <= config.mqtt.port <= 65535:
        problems.append(f"{where('mqtt.port')}: port {config.mqtt.port} is outside 1-65535")
    for key in ("password_file",):
        path = getattr(config.mqtt, key)
        if path is not None and not path.is_file():
            problems.append(f"{where('mqtt.' + key)}: file {path} not found")
    if config.mqtt.tls is not None:
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(config.mqtt.tls, key)
            if path is not None and not path.is_file():
                problems.append(f"{where('mqtt.tls.' + key)}: file {path} not found")
    if not HOST.match(config.mqtt.host):
        problems.append(
            f"{where('mqtt.host')}: invalid host {config.mqtt.host!r}; give a bare host name or "
            "IP address, and the port in mqtt.port"
        )
    problems.extend(_check_link_config(config))
    if config.database.batch_size < 1:
        problems.append(f"{where('database.batch_size')}: must be at least 1")
    if config.summaries.interval <= 0:
        problems.append(f"{where('summaries.interval')}: must be longer than 0 seconds")

    problems.extend(_check_consent_config(config))
    for role in config.api.roles:
        if role not in ("reader", "operator", "admin"):
            problems.append(
                f"{where('api.roles.' + role)}: unknown role {role!r}; roles are reader, operator and admin"
            )

    names: set[str] = set()
    for index, stream in enumerate(config.streams):
        prefix = f"streams[{index}]"
        if stream.name in names:
            problems.append(f"{where(prefix + '.name')}: stream name {stream.name!r} is used twice")
        names.add(stream.name)
        problems.extend(_check_stream(config, stream, prefix))

    if problems:
        raise ConfigError("\n".join(problems))


def _check_link_config(config: Config) -> list[str]:
    problems = []
    where = config.where
    mqtt = config.mqtt
    for key in ("max_inflight", "page_size", "batch_max", "batch_max_bytes"):
        if getattr(mqtt, key) < 1:
            problems.append(f"{where('mqtt.' + key)}: must be at least 1, got {getattr(mqtt, key)}")
    if mqtt.reconnect_min <= 0 or mqtt.reconnect_max < mqtt.reconnect_min:
        problems.append(
            f"{where('mqtt.reconnect_min')}: need 0 < reconnect_min <= reconnect_max, got "
            f"{mqtt.reconnect_min} and {mqtt.reconnect_max}"
        )
    budget = mqtt.budget
    if budget.bytes is not None and budget.bytes < 1:
        problems.append(
            f"{where('mqtt.budget.bytes')}: must be at least 1 byte, got {budget.bytes}; "
            "remove it for no budget"
        )
    if budget.period <= 0:
        problems.append(
            f"{where('mqtt.budget.period')}: must be longer than 0 seconds, got {budget.period}"
        )
    if not 0 <= budget.alert_share < 1:
        problems.append(
            f"{where('mqtt.budget.alert_share')}: must be at least 0 and below 1, got {budget.alert_share}"
        )
    for key in ("summary_expiry", "alert_expiry"):
        expiry = getattr(mqtt, key)
        if expiry is None:
            continue
        if mqtt.protocol != "5":
            problems.append(
                f'{where("mqtt." + key)}: message expiry needs MQTT 5; set mqtt.protocol to "5" '
                "or remove it"
            )
        elif not 1 <= expiry < 2**32:
            problems.append(
                f"{where('mqtt.' + key)}: must be at least 1 second and below 2^32 s, got {expiry}"
            )
    return problems


def _check_consent_config(config: Config) -> list[str]:
    problems = []
    where = config.where
    purposes = ", ".join(sorted(config.purposes)) or "none"
    for name, data_class in config.data_classes.items():
        share = data_class.budget_share
        if share is not None and not 0 < share <= 1:
            problems.append(
                f"{where(f'data_classes.{name}.budget_share')}: must be above 0 and at most 1, got {share}"
            )
        for index, purpose in enumerate(data_class.purposes):
            if purpose not in config.purposes:
                problems.append(
                    f"{where(f'data_classes.{name}.purposes[{index}]')}: unknown purpose {purpose!r}; "
                    f"declare it under 'purposes:' (declared: {purposes})"
                )
    for index, grant in enumerate(config.consents):
        prefix = f"consents[{index}]"
        if grant.subject not in config.known_subjects():
            problems.append(
                f"{where(prefix + '.subject')}: unknown subject {grant.subject!r}; add it under 'subjects:'"
            )
        if grant.purpose not in config.purposes:
            problems.append(
                f"{where(prefix + '.purpose')}: unknown purpose {grant.purpose!r}; declared: {purposes}"
            )
        for class_index, name in enumerate(grant.data_classes):
            if name not in config.data_classes:
                problems.append(
                    f"{where(f'{prefix}.data_classes[{class_index}]')}: unknown data class {name!r}"
                )
    return problems


def _check_stream(config: Config, stream: StreamConfig, prefix: str) -> list[str]:
    problems = []
    where = config.where

    if not NAME.match(stream.name):
        problems.append(
            f"{where(prefix + '.name')}: invalid stream name {stream.name!r}; use 1 to 64 letters, "
            "digits, '_', '.' or '-' (it becomes part of MQTT topics)"
        )
    for key in ("data_class", "summary_class", "alert_class"):
        name = getattr(stream, key)
        if name is not None and name not in config.data_classes:
            known = ", ".join(sorted(config.data_classes))
            problems.append(
                f"{where(f'{prefix}.{key}')}: unknown data class {name!r}; known: {known}"
            )

    if stream.alert_interval < 0:
        problems.append(f"{where(prefix + '.alert_interval')}: must be 0 seconds or more")
    if stream.window.size < 1 or stream.window.hop < 1:
        problems.append(f"{where(prefix + '.window')}: size and hop must be at least 1 sample")
    if str(stream.model.path) in ("", "."):
        problems.append(f"{where(prefix)}: model.path is missing; set it to a .tflite file")
    elif stream.model.path.is_dir():
        problems.append(
            f"{where(prefix + '.model.path')}: {stream.model.path} is a folder; give the .tflite file in it"
        )
    elif not stream.model.path.is_file():
        problems.append(
            f"{where(prefix + '.model.path')}: model file {stream.model.path} not found; check the path"
        )
    unknown = [label for label in stream.model.anomaly_labels if label not in stream.model.labels]
    if unknown:
        problems.append(
            f"{where(prefix + '.model.anomaly_labels')}: {unknown[0]!r} is not one of model.labels "
            f"{stream.model.labels}; list anomaly labels from model.labels"
        )

    channels = source_channels(stream.source)
    for key in ("mean", "std"):
        value = getattr(stream.normalize, key)
        if isinstance(value, list) and len(value) != channels:
            problems.append(
                f"{where(f'{prefix}.normalize.{key}')}: has {len(value)} values but the source has "
                f"{channels} channels; give one value per channel or a single number"
            )
        if key == "std" and (value == 0 or (isinstance(value, list) and 0 in value)):
            problems.append(f"{where(f'{prefix}.normalize.std')}: must not be 0")

    if isinstance(stream.source, ReplaySourceConfig):
        problems.extend(_check_replay(config, stream.source, prefix + ".source"))
    elif stream.source.channels < 1 or stream.source.rate_hz <= 0:
        problems.append(
            f"{where(prefix + '.source')}: channels must be at least 1 and rate_hz above 0"
        )
    return problems


def _check_replay(config: Config, source: ReplaySourceConfig, prefix: str) -> list[str]:
    problems = []
    where = config.where
    if not source.path:
        problems.append(f"{where(prefix)}: path is missing; give a file or a list of files")
    for index, path in enumerate(source.path):
        key = (
            where(f"{prefix}.path[{index}]")
            if f"{prefix}.path[{index}]" in config.locations
            else where(f"{prefix}.path")
        )
        if not path.is_file():
            problems.append(f"{key}: file {path} not found")
            continue
        problem = _check_first_record(source, path)
        if problem:
            problems.append(f"{key}: {problem}")
    if not source.columns:
        problems.append(f"{where(prefix)}: columns is missing; list the value columns")
    if not source.header and source.type == "csv":
        named = [c for c in [*source.columns, source.time_column] if isinstance(c, str)]
        if named:
            problems.append(
                f"{where(prefix + '.columns')}: column {named[0]!r} is a name but header is false; "
                "use 0-based column numbers"
            )
    if source.rate_hz <= 0 or source.speed <= 0:
        problems.append(f"{where(prefix)}: rate_hz and speed must be above 0")
    return problems


def _check_first_record(source: ReplaySourceConfig, path: Path) -> str | None:
    """Check the configured columns and time format against a replay file's first lines."""
    try:
        with path.open(encoding="utf-8-sig", errors="replace", newline="") as file:
            lines = [line for _, line in zip(range(50), file, strict=False) if line.strip()]
    except OSError as error:
        return f"file {path} could not be read: {error.strerror}"
    if not lines:
        return None
    if source.type == "jsonl":
        return _check_jsonl(source, path, lines[0])
    return _check_csv(source, path, lines)


def _check_csv(source: ReplaySourceConfig, path: Path, lines: list[str]) -> str | None:
    rows = [
        [unquote(cell) for cell in row]
        for row in csv.reader(
            lines, delimiter=source.delimiter, skipinitialspace=True, quoting=csv.QUOTE_NONE
        )
    ]
    time_index: int | None = None
    if source.header:
        header, rows = rows[0], rows[1:]
        for column in [*source.columns, source.time_column]:
            if isinstance(column, str) and column not in header:
                return f"column {column!r} is not in the header of {path.name} {header}; check columns and time_column"
        if isinstance(source.time_column, str):
            time_index = header.index(source.time_column)
    if isinstance(source.time_column, int):
        time_index = source.time_column
    if time_index is None or not rows or len(rows[0]) <= time_index:
        return None
    return _check_time(source, path, rows[0][time_index])


def _check_jsonl(source: ReplaySourceConfig, path: Path, line: str) -> str | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    for column in [*source.columns, source.time_column]:
        if column is not None and str(column) not in record:
            keys = ", ".join(sorted(record))
            return f"key {str(column)!r} is not in the first record of {path.name} (its keys: {keys}); check columns"
    if source.time_column is None:
        return None
    return _check_time(source, path, record[str(source.time_column)])


def _check_time(source: ReplaySourceConfig, path: Path, value: object) -> str | None:
    try:
        parse_time(value, source.time_format)
    except (TypeError, ValueError):
        expected = f"time_format {source.time_format!r}" if source.time_format else "epoch seconds"
        return (
            f"the first timestamp of {path.name}, {value!r}, does not match {expected}; "
            "set time_format to its strptime form, for example '%Y-%m-%d %H:%M:%S'"
        )
    return None

"""Checks across fields and against the file system, after the YAML is type-checked."""

from __future__ import annotations

import re

from edgeward.agent.sources import source_channels
from edgeward.config.schema import Config, ReplaySourceConfig, StreamConfig
from edgeward.errors import ConfigError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


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
    if config.database.batch_size < 1:
        problems.append(f"{where('database.batch_size')}: must be at least 1")
    if config.summaries.interval <= 0:
        problems.append(f"{where('summaries.interval')}: must be longer than 0 seconds")

    names: set[str] = set()
    for index, stream in enumerate(config.streams):
        prefix = f"streams[{index}]"
        if stream.name in names:
            problems.append(f"{where(prefix + '.name')}: stream name {stream.name!r} is used twice")
        names.add(stream.name)
        problems.extend(_check_stream(config, stream, prefix))

    if problems:
        raise ConfigError("\n".join(problems))


def _check_stream(config: Config, stream: StreamConfig, prefix: str) -> list[str]:
    problems = []
    where = config.where

    if not NAME.match(stream.name):
        problems.append(
            f"{where(prefix + '.name')}: invalid stream name {stream.name!r}; use 1 to 64 letters, "
            "digits, '_', '.' or '-' (it becomes part of MQTT topics)"
        )
    for key in ("data_class", "summary_class"):
        name = getattr(stream, key)
        if name not in config.data_classes:
            known = ", ".join(sorted(config.data_classes))
            problems.append(
                f"{where(f'{prefix}.{key}')}: unknown data class {name!r}; known: {known}"
            )

    if stream.window.size < 1 or stream.window.hop < 1:
        problems.append(f"{where(prefix + '.window')}: size and hop must be at least 1 sample")
    if str(stream.model.path) in ("", "."):
        problems.append(f"{where(prefix)}: model.path is missing; set it to a .tflite file")
    elif not stream.model.path.is_file():
        problems.append(
            f"{where(prefix + '.model.path')}: model file {stream.model.path} not found; check the path"
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
        if not path.is_file():
            problems.append(f"{where(f'{prefix}.path[{index}]')}: file {path} not found")
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

"""Config loading and `edgeward config check`: errors name the key path and line:column."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REALDATA
from edgeward.config import load_config_text
from edgeward.config.validate import check_config
from edgeward.errors import ConfigError

HELLO_WORLD = REALDATA / "models" / "hello_world_int8.tflite"


def valid_config(tmp_path: Path, model: Path = HELLO_WORLD, extra: str = "") -> str:
    return f"""device_id: unit-device
database:
  path: {tmp_path}/db.sqlite
  key_file: {tmp_path}/key
  create_key: true
api:
  socket: {tmp_path}/api.sock
streams:
  - name: sine
    source:
      type: synthetic
      channels: 1
    window:
      size: 1
      hop: 1
    model:
      path: {model}
      kind: regression
{extra}"""


def config_check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "edgeward.yaml"
    path.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "edgeward.cli", "config", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_config_check_accepts_valid_file(tmp_path: Path) -> None:
    result = config_check(tmp_path, valid_config(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_config_check_rejects_typo_key(tmp_path: Path) -> None:
    text = valid_config(tmp_path).replace("    window:", "    windw:")
    result = config_check(tmp_path, text)
    assert result.returncode == 1
    assert (
        "edgeward.yaml:13:5: streams[0].windw: unknown key; did you mean 'window'?" in result.stderr
    )


def test_config_check_rejects_wrong_type(tmp_path: Path) -> None:
    text = valid_config(tmp_path).replace("size: 1", "size: large")
    result = config_check(tmp_path, text)
    assert result.returncode == 1
    assert (
        "edgeward.yaml:14:13: streams[0].window.size: expected an integer, found 'large'"
        in result.stderr
    )


def test_config_check_rejects_missing_model(tmp_path: Path) -> None:
    result = config_check(tmp_path, valid_config(tmp_path, model=tmp_path / "nope.tflite"))
    assert result.returncode == 1
    assert "streams[0].model.path (line 17:13)" in result.stderr
    assert f"model file {tmp_path / 'nope.tflite'} not found" in result.stderr


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ("person_detect.tflite", "quantized_dimension must be in range"),
        ("audio_preprocessor_int8.tflite", "unresolved custom op: SignalWindow"),
        ("model_invoking_error.tflite", "unresolved custom op: fake-op-double"),
    ],
)
def test_config_check_rejects_runtime_failures(tmp_path: Path, model: str, reason: str) -> None:
    path = REALDATA / "models" / "expected_failures" / model
    result = config_check(tmp_path, valid_config(tmp_path, model=path))
    assert result.returncode == 1
    assert f"streams[0].model.path (line 17:13): stream sine: model {path}" in result.stderr
    assert reason in result.stderr


def test_config_check_rejects_window_shape(tmp_path: Path) -> None:
    text = valid_config(tmp_path).replace("size: 1", "size: 4")
    result = config_check(tmp_path, text)
    assert result.returncode == 1
    assert (
        "a window of shape [4, 1] (4 values) does not fit the input tensor of shape [1, 1]"
        in result.stderr
    )
    assert "set window.size to 1" in result.stderr


def test_loader_reports_every_error(tmp_path: Path) -> None:
    text = (
        valid_config(tmp_path)
        .replace("channels: 1", "channels: [1]")
        .replace("hop: 1", "hop: many")
    )
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, "c.yaml")
    lines = str(caught.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(
        "c.yaml:12:17: streams[0].source.channels: expected an integer, found a list"
    )


def test_loader_parses_durations() -> None:
    config = load_config_text(
        "device_id: d\nsummaries: {interval: 10m}\ndatabase: {batch_interval: 250ms}\n"
    )
    assert config.summaries.interval == 600.0
    assert config.database.batch_interval == 0.25


def test_loader_rejects_invalid_duration() -> None:
    with pytest.raises(ConfigError, match=r"summaries.interval: invalid duration 'soon'"):
        load_config_text("device_id: d\nsummaries: {interval: soon}\n")


def test_loader_rejects_unknown_source_type() -> None:
    text = "device_id: d\nstreams:\n  - name: s\n    source: {type: serial}\n"
    with pytest.raises(
        ConfigError, match=r"streams\[0\].source.type: invalid source type 'serial'"
    ):
        load_config_text(text)


def test_loader_reports_yaml_syntax_error() -> None:
    with pytest.raises(ConfigError, match=r"c.yaml:\d+:\d+: invalid YAML"):
        load_config_text("device_id: d\nstreams: [a\n  b: c\n", "c.yaml")


def test_check_rejects_unknown_data_class(tmp_path: Path) -> None:
    text = valid_config(tmp_path, extra="    data_class: secret\n")
    config = load_config_text(text, "c.yaml")
    with pytest.raises(
        ConfigError, match=r"streams\[0\].data_class \(line 19:17\): unknown data class 'secret'"
    ):
        check_config(config)


def test_check_rejects_duplicate_stream_names(tmp_path: Path) -> None:
    text = valid_config(tmp_path)
    stream = text[text.index("  - name: sine") :]
    config = load_config_text(text + stream, "c.yaml")
    with pytest.raises(ConfigError, match="stream name 'sine' is used twice"):
        check_config(config)


def test_packaged_config_is_valid() -> None:
    packaged = Path(__file__).resolve().parent.parent / "packaging" / "edgeward.yaml"
    config = load_config_text(packaged.read_text(), str(packaged), packaged.parent)
    assert config.device_id


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("create_key: true", "create_key: false"), "key file"),
        (
            ("kind: regression", "kind: regression\n      anomaly_labels: [high]"),
            "'high' is not one of model.labels",
        ),
        (
            ("api:", "mqtt:\n  host: mqtt://127.0.0.1:1883\napi:"),
            "invalid host 'mqtt://127.0.0.1:1883'",
        ),
    ],
)
def test_config_check_rejects_cross_field_errors(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    result = config_check(tmp_path, valid_config(tmp_path).replace(*change))
    assert result.returncode == 1
    assert message in result.stderr


def test_config_check_rejects_world_readable_key(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("ab" * 32)
    key.chmod(0o644)
    result = config_check(tmp_path, valid_config(tmp_path))
    assert result.returncode == 1
    assert "run 'chmod 600" in result.stderr


def test_config_check_rejects_model_folder(tmp_path: Path) -> None:
    result = config_check(tmp_path, valid_config(tmp_path, model=tmp_path))
    assert result.returncode == 1
    assert f"{tmp_path} is a folder; give the .tflite file in it" in result.stderr


def replay_config(tmp_path: Path, source: str) -> str:
    return valid_config(tmp_path).replace(
        "      type: synthetic\n      channels: 1\n", f"      type: csv\n{source}"
    )


def test_config_check_rejects_column_not_in_header(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("timestamp,value\n1,2\n")
    source = f"      path: {tmp_path}/data.csv\n      columns: [temperature]\n"
    result = config_check(tmp_path, replay_config(tmp_path, source))
    assert result.returncode == 1
    assert "streams[0].source.path (line 12:13)" in result.stderr
    assert (
        "column 'temperature' is not in the header of data.csv ['timestamp', 'value']"
        in result.stderr
    )


def test_config_check_rejects_time_format_mismatch(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("timestamp,value\n2013-12-02 21:15:00,2\n")
    source = (
        f"      path: {tmp_path}/data.csv\n      columns: [value]\n      time_column: timestamp\n"
        "      time_format: '%d/%m/%Y %H:%M'\n"
    )
    result = config_check(tmp_path, replay_config(tmp_path, source))
    assert result.returncode == 1
    assert (
        "the first timestamp of data.csv, '2013-12-02 21:15:00', does not match time_format"
        in result.stderr
    )


def test_config_check_accepts_bom_and_quoted_header(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text('\ufeff"t","value"\n1,2\n', encoding="utf-8")
    source = f"      path: {tmp_path}/data.csv\n      columns: [value]\n      time_column: t\n"
    result = config_check(tmp_path, replay_config(tmp_path, source))
    assert result.returncode == 0, result.stderr


def test_config_check_rejects_missing_tls_file(tmp_path: Path) -> None:
    text = valid_config(tmp_path).replace(
        "api:", f"mqtt:\n  tls: {{ca_file: {tmp_path}/ca.crt}}\napi:"
    )
    result = config_check(tmp_path, text)
    assert result.returncode == 1
    assert f"mqtt.tls.ca_file (line 7:18): file {tmp_path}/ca.crt not found" in result.stderr

"""The `edgeward` command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from edgeward import __version__, cli_consent, client
from edgeward.config import load_config
from edgeward.errors import EdgewardError

log = logging.getLogger(__name__)

DEFAULT_SOCKET = Path("/run/edgeward/api.sock")
DEFAULT_CONFIG = Path("/etc/edgeward/edgeward.yaml")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        code: int = args.handler(args)
        return code
    except EdgewardError as error:
        print(f"edgeward: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeward", description="On-device sensor inference daemon."
    )
    parser.add_argument("--version", action="version", version=f"edgeward {__version__}")
    commands = parser.add_subparsers(metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon")
    run.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="config file (default: %(default)s)"
    )
    run.add_argument("--duration", type=float, help="stop after this many seconds")
    run.add_argument(
        "--until-done", action="store_true", help="stop when every replay source has ended"
    )
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.set_defaults(handler=_run)

    demo = commands.add_parser(
        "demo", help="run the daemon on the embedded default for a short while"
    )
    demo.add_argument(
        "--duration", type=float, default=40.0, help="seconds to run (default: %(default)s)"
    )
    demo.add_argument(
        "--state-dir",
        type=Path,
        default=Path("demo-state"),
        help="folder for the demo's config, key and database (default: %(default)s)",
    )
    demo.set_defaults(handler=_demo)

    config = commands.add_parser("config", help="work with config files")
    config_commands = config.add_subparsers(metavar="ACTION", required=True)
    check = config_commands.add_parser("check", help="validate a config file and load its models")
    check.add_argument("file", type=Path)
    check.set_defaults(handler=_config_check)

    status = commands.add_parser("status", help="show the running daemon's status")
    _add_socket_options(status)
    status.set_defaults(handler=_status)

    cli_consent.add_commands(commands, _add_socket_options, _socket_path)

    query = commands.add_parser("query", help="read stored results or summaries")
    query_commands = query.add_subparsers(metavar="TABLE", required=True)
    for table in ("results", "summaries"):
        sub = query_commands.add_parser(table, help=f"list stored {table}, newest first")
        sub.add_argument("--stream", help="only this stream")
        sub.add_argument(
            "--since", help="only newer than this: '10m', '2h', an ISO time or epoch seconds"
        )
        sub.add_argument(
            "--limit", type=int, default=20, help="at most this many rows (default: %(default)s)"
        )
        _add_socket_options(sub)
        sub.set_defaults(handler=_query, table=table)
    return parser


def _add_socket_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--socket", type=Path, help=f"API socket (default: from --config, else {DEFAULT_SOCKET})"
    )
    parser.add_argument("--config", type=Path, help="read the socket path from this config file")
    parser.add_argument("--json", action="store_true", help="print the raw JSON reply")


def _socket_path(args: argparse.Namespace) -> Path:
    if args.socket:
        return Path(args.socket)
    if args.config:
        return load_config(args.config).api.socket
    return Path(os.environ.get("EDGEWARD_SOCKET", DEFAULT_SOCKET))


def _run(args: argparse.Namespace) -> int:
    from edgeward.agent import systemd
    from edgeward.agent.daemon import Daemon, RunOptions

    systemd.setup_logging(getattr(logging, args.log_level))
    config = load_config(args.config)
    return Daemon(config, RunOptions(duration=args.duration, until_done=args.until_done)).run()


def _demo(args: argparse.Namespace) -> int:
    from edgeward.demo import run_demo

    return run_demo(args.state_dir, args.duration)


def _config_check(args: argparse.Namespace) -> int:
    from edgeward.agent.daemon import load_models
    from edgeward.config.validate import check_config
    from edgeward.security.keys import load_master_key, master_key_path

    config = load_config(args.file)
    check_config(config)
    key_file = master_key_path(config.database.key_file, config.database.key_credential)
    if not (config.database.create_key and not key_file.exists()):
        load_master_key(key_file)
    models = load_models(config)
    for stream, model in zip(config.streams, models, strict=True):
        print(
            f"stream {stream.name}: model {model.path} ({model.runtime}, input {model.input_shape} "
            f"{model.input_dtype}, sha256 {model.sha256[:12]})"
        )
    print(f"{args.file}: OK")
    return 0


def _status(args: argparse.Namespace) -> int:
    data = client.get(_socket_path(args), "/v1/status")
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(format_status(data))
    return 0


def _query(args: argparse.Namespace) -> int:
    params = {"stream": args.stream, "since": args.since, "limit": args.limit}
    data = client.get(_socket_path(args), f"/v1/{args.table}", params)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    rows = data[args.table]
    if not rows:
        print(f"no {args.table} match")
        return 0
    print(format_results(rows) if args.table == "results" else format_summaries(rows))
    return 0


def format_status(data: dict[str, Any]) -> str:
    store = data["store"]
    mqtt = data["mqtt"]
    lines = [
        f"edgeward {data['version']} on {data['device_id']}, pid {data['pid']}, up {data['uptime']:.0f} s",
        f"database {data['database']}: {store.get('results', 0)} results, {store.get('summaries', 0)} summaries, "
        f"{store.get('alerts', 0)} alerts, {store.get('outbox_backlog', 0)} waiting in the outbox",
    ]
    age = store.get("outbox_oldest_unsent_age")
    if age is not None:
        lines[-1] += f" (oldest {age:.0f} s)"
    if "broker" in mqtt:
        state = (
            "connected"
            if mqtt["connected"]
            else f"not connected ({mqtt['last_error'] or 'connecting'})"
        )
        lines.append(
            f"mqtt {mqtt['broker']}: {state}, {mqtt['acknowledged']} acknowledged in "
            f"{mqtt['messages']} messages ({mqtt['bytes_published']} payload bytes), {mqtt['resent']} re-sent, "
            f"{mqtt['rejected']} rejected, {mqtt['connect_attempts']} connection attempts"
        )
        budget = mqtt["budget"]
        if budget["bytes"] is not None:
            held = " (holding messages back)" if budget.get("holding_since") else ""
            lines.append(
                f"mqtt budget: {budget['used']} of {budget['bytes']} payload and topic bytes used "
                f"in the last {budget['period']:.0f} s, {budget['alert_share']:.0%} kept for "
                f"alerts{held}"
            )
    for name, stream in data["streams"].items():
        lines.append(
            f"stream {name}: {stream['windows']} windows, {stream['summaries']} summaries, "
            f"{stream['skipped_samples']} samples skipped, {stream['malformed_lines']} malformed lines, "
            f"{stream.get('withheld_no_consent', 0)} withheld for lack of consent"
        )
    return "\n".join(lines)


def format_results(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'time (UTC)':<23} {'stream':<16} {'label':<12} {'score':>9} anomaly"]
    for row in rows:
        lines.append(
            f"{_utc(row['ts']):<23} {row['stream']:<16} {str(row['label'] or '-'):<12} "
            f"{row['score']:>9.4f} {'yes' if row['anomaly'] else 'no'}"
        )
    return "\n".join(lines)


def format_summaries(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'period start (UTC)':<23} {'stream':<16} {'seq':>5} {'windows':>7} {'anomalies':>9}  sent  labels"
    ]
    for row in rows:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(row["label_counts"].items()))
        lines.append(
            f"{_utc(row['period_start']):<23} {row['stream']:<16} {row['seq']:>5} {row['windows']:>7} "
            f"{row['anomalies']:>9}  {'yes ' if row['sent_at'] else 'no  '}  {labels}"
        )
    return "\n".join(lines)


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


if __name__ == "__main__":
    sys.exit(main())

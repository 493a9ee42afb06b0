"""`edgeward consent` and `edgeward audit`: the ledger and the audit log through the local API."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeward import client
from edgeward.agent.timeparse import parse_since
from edgeward.errors import ConsentError, EdgewardError

SocketPath = Callable[[argparse.Namespace], Path]


def add_commands(
    commands: Any,
    add_socket_options: Callable[[argparse.ArgumentParser], None],
    socket_path: SocketPath,
) -> None:
    """Add the consent and audit subcommands to the top-level parser."""
    consent = commands.add_parser("consent", help="grant, revoke and list consent")
    actions = consent.add_subparsers(metavar="ACTION", required=True)
    for action in ("grant", "revoke"):
        sub = actions.add_parser(action, help=f"{action} a purpose for a subject")
        sub.add_argument("--subject", required=True, help="whose data (a configured subject)")
        sub.add_argument("--purpose", required=True, help="a purpose declared under 'purposes:'")
        sub.add_argument(
            "--class",
            dest="data_classes",
            action="append",
            default=[],
            help="a data class; repeat for several (default: every class that needs the purpose)",
        )
        if action == "grant":
            sub.add_argument(
                "--expires", help="when the grant ends: '30d', an ISO 8601 time or epoch seconds"
            )
            sub.add_argument(
                "--policy",
                type=Path,
                help="the policy text the subject agreed to; its SHA-256 is recorded",
            )
        sub.add_argument(
            "--method", default="cli", help="how consent was given (default: %(default)s)"
        )
        add_socket_options(sub)
        sub.set_defaults(handler=lambda args, a=action: _record(args, a, socket_path))

    listing = actions.add_parser("list", help="list the grants in force")
    add_socket_options(listing)
    listing.set_defaults(handler=lambda args: _list(args, socket_path))

    history = actions.add_parser("history", help="list every grant and revocation, oldest first")
    history.add_argument("--subject", help="only this subject")
    add_socket_options(history)
    history.set_defaults(handler=lambda args: _history(args, socket_path))

    export = commands.add_parser(
        "export", help="write everything stored about a subject as JSON lines"
    )
    export.add_argument("--subject", required=True, help="a configured subject")
    export.add_argument("--output", type=Path, help="file to write (default: standard output)")
    add_socket_options(export)
    export.set_defaults(handler=lambda args: _export(args, socket_path))

    erase = commands.add_parser(
        "erase", help="delete a subject's stored data and destroy its data keys"
    )
    erase.add_argument("--subject", required=True, help="a configured subject")
    erase.add_argument(
        "--class",
        dest="data_classes",
        action="append",
        default=[],
        help="only this data class; repeat for several (default: every class)",
    )
    add_socket_options(erase)
    erase.set_defaults(handler=lambda args: _erase(args, socket_path))

    store = commands.add_parser("store", help="check the encrypted database")
    store_actions = store.add_subparsers(metavar="ACTION", required=True)
    check = store_actions.add_parser("check", help="check every page's HMAC (SQLCipher)")
    add_socket_options(check)
    check.set_defaults(handler=lambda args: _store_check(args, socket_path))

    keys = commands.add_parser("keys", help="manage the master key")
    key_actions = keys.add_subparsers(metavar="ACTION", required=True)
    rotate = key_actions.add_parser(
        "rotate", help="re-key the database and rewrap the data keys under a new master key"
    )
    rotate.add_argument("--config", type=Path, required=True, help="the daemon's config file")
    rotate.set_defaults(handler=_rotate)

    audit = commands.add_parser("audit", help="check the audit log")
    audit_actions = audit.add_subparsers(metavar="ACTION", required=True)
    verify = audit_actions.add_parser("verify", help="check the audit log's hash chain")
    add_socket_options(verify)
    verify.set_defaults(handler=lambda args: _verify(args, socket_path))


def _record(args: argparse.Namespace, action: str, socket_path: SocketPath) -> int:
    body: dict[str, Any] = {
        "action": action,
        "subject": args.subject,
        "purpose": args.purpose,
        "data_classes": args.data_classes,
        "method": args.method,
    }
    if action == "grant":
        if args.expires:
            body["expires_at"] = _future_time(args.expires)
        if args.policy:
            try:
                body["policy_sha256"] = hashlib.sha256(args.policy.read_bytes()).hexdigest()
            except OSError as error:
                raise ConsentError(
                    f"policy file {args.policy} could not be read: {error.strerror}"
                ) from None
    reply = client.post(socket_path(args), "/v1/consents", body)
    if args.json:
        print(json.dumps(reply, indent=2))
        return 0
    record = reply["consent"]
    print(f"{action} recorded (id {record['id']}): {_describe(record)}")
    for data_class, rows in sorted(reply["erased_rows"].items()):
        print(f"erased {rows} stored rows of class {data_class}")
    withdrawn = {name: rows for name, rows in reply.get("withdrawn_messages", {}).items() if rows}
    for data_class, rows in sorted(withdrawn.items()):
        print(f"withdrew {rows} unsent messages of class {data_class}; they stay on the device")
    return 0


def _future_time(text: str) -> float:
    now = time.time()
    try:
        if text[-1:] in "smhd" and text[:-1].replace(".", "", 1).isdigit():
            # A duration counts forward here, unlike --since.
            return now + (now - parse_since(text, now))
        return parse_since(text, now)
    except ValueError as error:
        raise ConsentError(f"--expires: {error}") from None


def _list(args: argparse.Namespace, socket_path: SocketPath) -> int:
    reply = client.get(socket_path(args), "/v1/consents")
    if args.json:
        print(json.dumps(reply, indent=2))
        return 0
    if not reply["consents"]:
        print("no grants in force")
    for record in reply["consents"]:
        print(_describe(record))
    return 0


def _history(args: argparse.Namespace, socket_path: SocketPath) -> int:
    reply = client.get(socket_path(args), "/v1/consents/history", {"subject": args.subject})
    if args.json:
        print(json.dumps(reply, indent=2))
        return 0
    for record in reply["history"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record["recorded_at"]))
        print(f"{when} {record['action']:<6} {_describe(record)}")
    return 0


def _open_export(path: Path) -> Any:
    # The export contains decrypted personal data: only the owner may read it.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as error:
        raise EdgewardError(
            f"cannot write the export to {path}: {error.strerror}; check the folder"
        ) from None
    return os.fdopen(fd, "w", encoding="utf-8")


def _export(args: argparse.Namespace, socket_path: SocketPath) -> int:
    path = socket_path(args)
    output = _open_export(args.output) if args.output else sys.stdout
    written = 0
    try:
        for table in ("consents", "results", "summaries"):
            after: int | None = 0
            while after is not None:
                params = {"subject": args.subject, "table": table, "after": after, "limit": 1000}
                page = client.get(path, "/v1/export", params)
                for row in page["rows"]:
                    output.write(json.dumps({"table": table, **row}, sort_keys=True) + "\n")
                    written += 1
                after = page["next_after"]
    finally:
        if args.output:
            output.close()
    if args.output:
        print(
            f"wrote {written} records about subject {args.subject} to {args.output}",
            file=sys.stderr,
        )
    return 0


def _erase(args: argparse.Namespace, socket_path: SocketPath) -> int:
    body = {"subject": args.subject, "data_classes": args.data_classes}
    reply = client.post(socket_path(args), "/v1/erase", body)
    if args.json:
        print(json.dumps(reply, indent=2))
        return 0
    stored = {name: rows for name, rows in reply["erased_rows"].items() if rows}
    destroyed = reply["destroyed_keys"]
    if not stored and not destroyed:
        print(f"nothing was stored about subject {args.subject}")
    for data_class, rows in sorted(stored.items()):
        print(f"erased {rows} stored rows of class {data_class}")
    for data_class in sorted(destroyed):
        print(f"destroyed the data key of class {data_class} for subject {args.subject}")
    print("the consent ledger and the audit log keep their records of this subject")
    return 0


def _store_check(args: argparse.Namespace, socket_path: SocketPath) -> int:
    reply = client.get(socket_path(args), "/v1/store/check", timeout=600)
    if args.json:
        print(json.dumps(reply, indent=2))
    elif reply["ok"]:
        print("database OK: every page passed its HMAC check")
    else:
        print("database TAMPERED or damaged:")
        for problem in reply["problems"]:
            print(f"  {problem}")
    return 0 if reply["ok"] else 1


def _rotate(args: argparse.Namespace) -> int:
    from edgeward.config import load_config
    from edgeward.errors import KeyFileError
    from edgeward.security.rotation import rotate
    from edgeward.store.lock import DatabaseLock

    config = load_config(args.config)
    if config.database.key_credential is not None:
        raise KeyFileError(
            "the master key comes from a systemd credential; rotate it where the credential is made"
        )
    lock = DatabaseLock(config.database.path)
    lock.acquire()
    try:
        rotate(config.database.key_file, config.database.path, _progress_bar)
    finally:
        lock.release()
    print(f"\nrotated the master key in {config.database.key_file}", file=sys.stderr)
    return 0


def _progress_bar(fraction: float) -> None:
    width = 30
    filled = int(fraction * width)
    sys.stderr.write(f"\rre-keying [{'#' * filled}{'.' * (width - filled)}] {fraction:4.0%}")
    sys.stderr.flush()


def _verify(args: argparse.Namespace, socket_path: SocketPath) -> int:
    reply = client.get(socket_path(args), "/v1/audit/verify")
    if args.json:
        print(json.dumps(reply, indent=2))
    elif reply["ok"]:
        print(f"audit log OK: {reply['rows']} rows, every link intact")
    else:
        print(f"audit log BROKEN at row {reply['broken_id']}: {reply['reason']}")
    return 0 if reply["ok"] else 1


def _describe(record: dict[str, Any]) -> str:
    expires = record.get("expires_at")
    until = time.strftime(" until %Y-%m-%d %H:%M:%S UTC", time.gmtime(expires)) if expires else ""
    classes = ", ".join(record["data_classes"]) or "all classes"
    return (
        f"subject {record['subject']}, purpose {record['purpose']}, classes {classes}{until}, "
        f"by {record['actor']} ({record['method']})"
    )

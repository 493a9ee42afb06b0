"""The local API: HTTP/1.1 with JSON bodies on a Unix socket.

Every reply has a status code and a JSON body. A malformed request gets an
error reply and the server goes on serving. Reads use their own database
connection, shared by the handler threads under a lock.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import sqlcipher3

from edgeward.agent.timeparse import parse_since
from edgeward.errors import ApiError
from edgeward.security.roles import has_role
from edgeward.store.queries import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    Unsealer,
    query_results,
    query_summaries,
    stream_has_rows,
)

log = logging.getLogger(__name__)


class BadRequest(Exception):
    """A request parameter is invalid; the message is sent to the client."""


class UnknownStream(Exception):
    """The stream named in a request is neither configured nor stored."""


class NotFound(Exception):
    """A thing named in a request does not exist; the message is sent with a 404."""


@dataclass(frozen=True)
class Request:
    """One parsed request, with the peer's uid from SO_PEERCRED."""

    method: str
    path: str
    query: dict[str, str]
    body: bytes
    uid: int | None
    role: str | None = None


Handler = Callable[[Request], dict[str, Any]]


class ApiServer:
    """Serve the API on a Unix socket from a thread of its own."""

    def __init__(
        self,
        socket_path: Path,
        read_connection: Any,
        status: Callable[[], dict[str, Any]],
        socket_mode: int = 0o660,
        request_timeout: float = 5.0,
        max_request_bytes: int = 65536,
        streams: Callable[[], list[str]] | None = None,
        unsealer: Unsealer | None = None,
        audit_read: Callable[[int | None, list[str], int], None] | None = None,
        role_of: Callable[[int | None, int | None], str | None] | None = None,
        may_read: Callable[[str | None, str], bool] | None = None,
    ) -> None:
        self.socket_path = socket_path
        self._connection = read_connection
        self._lock = threading.Lock()
        self._status = status
        self._streams = streams
        self._unsealer = unsealer
        self._audit_read = audit_read
        self._role_of = role_of
        self._may_read = may_read or (lambda role, data_class: True)
        self._needs: dict[str, str] = {}
        self._routes: dict[str, dict[str, Handler]] = {
            "/v1/status": {"GET": self._get_status},
            "/v1/results": {"GET": self._get_results},
            "/v1/summaries": {"GET": self._get_summaries},
        }
        self._mode = socket_mode
        try:
            socket_path.parent.mkdir(parents=True, exist_ok=True)
            self._server = _UnixHttpServer(
                str(socket_path), _make_handler(self, request_timeout, max_request_bytes)
            )
        except OSError as error:
            raise ApiError(
                f"cannot listen on API socket {socket_path}: {error.strerror or error}; "
                "check api.socket and the permissions of its folder"
            ) from error
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="edgeward-api", daemon=True
        )

    def start(self) -> None:
        os.chmod(self.socket_path, self._mode)
        self._thread.start()
        log.info("local API listening on %s", self.socket_path)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        try:
            self.socket_path.unlink()
        except FileNotFoundError:
            pass

    def add_routes(
        self, routes: dict[str, dict[str, Handler]], needs: dict[str, str] | None = None
    ) -> None:
        """Serve more routes: path -> method -> handler; `needs` maps "METHOD path" to a role."""
        for path, methods in routes.items():
            self._routes.setdefault(path, {}).update(methods)
        self._needs.update(needs or {})

    def route(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        uid: int | None = None,
        gid: int | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Route one request and return (HTTP status, JSON body)."""
        parts = urlsplit(target)
        role = self._role_of(uid, gid) if self._role_of is not None else "admin"
        needed = self._needs.get(f"{method} {parts.path}", "reader")
        if not has_role(role, needed):
            who = f"uid {uid}" if uid is not None else "this client"
            return 403, {
                "error": f"{method} {parts.path} needs role {needed}; {who} has "
                f"{'role ' + role if role else 'no role'} (see api.roles)"
            }
        methods = self._routes.get(parts.path)
        if methods is None:
            available = ", ".join(sorted(self._routes))
            return 404, {"error": f"no route {parts.path}; available: {available}"}
        handler = methods.get(method)
        if handler is None:
            allowed = " or ".join(sorted(methods))
            return 405, {"error": f"method {method} is not allowed on {parts.path}; use {allowed}"}
        try:
            query = _single_values(
                parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
            )
            return 200, handler(Request(method, parts.path, query, body, uid, role))
        except BadRequest as error:
            return 400, {"error": str(error)}
        except (UnknownStream, NotFound) as error:
            return 404, {"error": str(error)}
        except sqlcipher3.DatabaseError as error:
            # SQLCipher reports a page that fails its HMAC check as a malformed image.
            log.error("api: %s %s: database read failed: %s", method, parts.path, error)
            return 500, {
                "error": f"the database could not be read ({error}); a page may have been changed "
                "outside edgeward (run 'edgeward store check') or the disk is failing"
            }

    def _get_status(self, request: Request) -> dict[str, Any]:
        allow_parameters(request.query, set())
        return self._status()

    def _get_results(self, request: Request) -> dict[str, Any]:
        allow_parameters(request.query, {"stream", "since", "limit"})
        stream, since, limit = _stream_since_limit(request.query)
        with self._lock:
            self._check_stream(stream)
            rows = query_results(self._connection, stream, since, limit, self._unsealer)
        rows = [row for row in rows if self._may_read(request.role, row["data_class"])]
        opened = [row for row in rows if row.get("readable")]
        if opened and self._audit_read is not None:
            self._audit_read(request.uid, sorted({row["stream"] for row in opened}), len(opened))
        return {"results": rows, "count": len(rows)}

    def _get_summaries(self, request: Request) -> dict[str, Any]:
        allow_parameters(request.query, {"stream", "since", "limit"})
        stream, since, limit = _stream_since_limit(request.query)
        with self._lock:
            self._check_stream(stream)
            rows = query_summaries(self._connection, stream, since, limit)
        rows = [row for row in rows if self._may_read(request.role, row["data_class"])]
        return {"summaries": rows, "count": len(rows)}

    def _check_stream(self, stream: str | None) -> None:
        if stream is None or self._streams is None:
            return
        configured = self._streams()
        if stream in configured or stream_has_rows(self._connection, stream):
            return
        known = ", ".join(sorted(configured)) or "none"
        raise UnknownStream(f"unknown stream {stream!r}; configured streams: {known}")


class _UnixHttpServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def server_bind(self) -> None:
        path = Path(self.server_address)  # type: ignore[arg-type]
        if path.exists() or path.is_symlink():
            _remove_stale_socket(path)
        super().server_bind()


def _remove_stale_socket(path: Path) -> None:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
        return
    finally:
        probe.close()
    raise OSError(f"another process is serving {path}; stop it or set api.socket to another path")


def _make_handler(api: ApiServer, timeout: float, max_bytes: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "edgeward"
        protocol_version = "HTTP/1.1"
        # Reply with a status line even to a request line that could not be parsed.
        default_request_version = "HTTP/1.1"

        def setup(self) -> None:
            self.timeout = timeout  # type: ignore[misc]
            super().setup()

        def address_string(self) -> str:
            return "unix-socket"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("api: " + format, *args)

        def do_GET(self) -> None:
            self._answer("GET")

        def do_POST(self) -> None:
            self._answer("POST")

        def do_PUT(self) -> None:
            self._answer("PUT")

        def do_DELETE(self) -> None:
            self._answer("DELETE")

        def _answer(self, method: str) -> None:
            length = self.headers.get("Content-Length", "0")
            if not length.isdigit() or int(length) > max_bytes:
                # The body is not read, so the connection cannot carry another request.
                self.close_connection = True
                self._send(413, {"error": f"request body must be at most {max_bytes} bytes"})
                return
            body = self.rfile.read(int(length)) if int(length) else b""
            try:
                uid, gid = _peer_ids(self.connection)
                status, reply = api.route(method, self.path, body, uid, gid)
            except Exception as error:
                log.exception("api: %s %s failed", method, self.path)
                status, reply = 500, {"error": f"internal error: {error}"}
            self._send(status, reply)

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = (json.dumps(body, indent=None, separators=(",", ":")) + "\n").encode()
            self.send_response(status, HTTPStatus(status).phrase)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def send_error(
            self, code: int, message: str | None = None, explain: str | None = None
        ) -> None:
            # Errors found by http.server itself (a bad request line, say) get a JSON body too.
            self.close_connection = True
            self._send(code, {"error": message or HTTPStatus(code).phrase})

    return Handler


def _peer_ids(connection: socket.socket) -> tuple[int | None, int | None]:
    try:
        credentials = connection.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
        )
    except OSError:
        return None, None
    _pid, uid, gid = struct.unpack("3i", credentials)
    return int(uid), int(gid)


def _single_values(query: dict[str, list[str]]) -> dict[str, str]:
    result = {}
    for key, values in query.items():
        if len(values) != 1:
            raise BadRequest(f"parameter {key!r} is given {len(values)} times; give it once")
        result[key] = values[0]
    return result


def allow_parameters(query: dict[str, str], allowed: set[str]) -> None:
    unknown = sorted(set(query) - allowed)
    if unknown:
        names = ", ".join(sorted(allowed)) or "none"
        raise BadRequest(f"unknown parameter {unknown[0]!r}; allowed: {names}")


def _stream_since_limit(query: dict[str, str]) -> tuple[str | None, float | None, int]:
    stream = query.get("stream") or None
    since = None
    if query.get("since"):
        try:
            since = parse_since(query["since"])
        except ValueError as error:
            raise BadRequest(f"since: {error}") from None
    limit = DEFAULT_LIMIT
    if "limit" in query:
        text = query["limit"]
        if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
            raise BadRequest(f"limit must be an integer from 1 to {MAX_LIMIT}, got {text!r}")
        limit = int(text)
    return stream, since, limit

"""A client for the local API, used by the CLI."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from edgeward.errors import ApiError


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self._socket_path))
        self.sock = sock


def get(
    socket_path: Path, path: str, params: dict[str, Any] | None = None, timeout: float = 10.0
) -> Any:
    """GET a path of the API and return the decoded JSON body. Raises ApiError."""
    query = {k: v for k, v in (params or {}).items() if v is not None}
    target = path + ("?" + urlencode(query) if query else "")
    return _request(socket_path, "GET", target, None, timeout)


def post(socket_path: Path, path: str, body: dict[str, Any], timeout: float = 40.0) -> Any:
    """POST a JSON body to a path of the API and return the decoded JSON reply. Raises ApiError."""
    return _request(socket_path, "POST", path, json.dumps(body).encode(), timeout)


def _request(
    socket_path: Path, method: str, target: str, payload: bytes | None, timeout: float
) -> Any:
    connection = _UnixConnection(socket_path, timeout)
    headers = {"Content-Type": "application/json"} if payload is not None else {}
    try:
        connection.request(method, target, body=payload, headers=headers)
        response = connection.getresponse()
        body = response.read()
    except FileNotFoundError:
        raise ApiError(
            f"no API socket at {socket_path}; is the daemon running? (edgeward run --config FILE)"
        ) from None
    except PermissionError:
        raise ApiError(
            f"permission denied on {socket_path}; add your user to the socket's group (edgeward)"
        ) from None
    except (OSError, http.client.HTTPException) as error:
        raise ApiError(f"cannot reach the API at {socket_path}: {error}") from error
    finally:
        connection.close()

    try:
        data = json.loads(body)
    except json.JSONDecodeError as error:
        raise ApiError(
            f"the API at {socket_path} sent a reply that is not JSON: {body[:200]!r}"
        ) from error
    if response.status != 200:
        raise ApiError(f"{target}: {response.status} {data.get('error', '')}")
    return data

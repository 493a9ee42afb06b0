"""The local API on a real Unix socket: routes, parameters and bad requests."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeward import client
from edgeward.agent.api import ApiServer
from edgeward.config.schema import ApiConfig, RoleMembers
from edgeward.errors import ApiError
from edgeward.security.roles import role_of
from edgeward.store.database import open_database
from edgeward.store.rows import ResultRow
from edgeward.store.writer import Writer

KEY = bytes(32)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiServer]:
    path = tmp_path / "db"
    connection = open_database(path, KEY, writer=True)
    writer = Writer(connection)
    writer.start()
    writer.put(
        [
            ResultRow(
                "s1",
                "inference",
                float(i),
                "0" * 64,
                "a",
                0.1 * i,
                i == 3,
                struct.pack("<d", 1.0),
                b"",
            )
            for i in range(5)
        ]
    )
    writer.stop()

    server = ApiServer(tmp_path / "api.sock", open_database(path, KEY), lambda: {"ok": True})
    server.start()
    yield server
    server.stop()
    connection.close()


def raw_request(path: Path, data: bytes) -> tuple[int, dict[str, Any]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        sock.sendall(data)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_status_route(api: ApiServer) -> None:
    assert client.get(api.socket_path, "/v1/status") == {"ok": True}


def test_results_filters(api: ApiServer) -> None:
    data = client.get(api.socket_path, "/v1/results", {"stream": "s1", "since": "2", "limit": 2})
    assert data["count"] == 2
    assert [row["ts"] for row in data["results"]] == [4.0, 3.0]
    assert data["results"][1]["anomaly"] is True


def test_unknown_route_is_404(api: ApiServer) -> None:
    with pytest.raises(ApiError, match="404 no route /v1/nope"):
        client.get(api.socket_path, "/v1/nope")


def test_invalid_limit_is_400(api: ApiServer) -> None:
    with pytest.raises(ApiError, match="400 limit must be an integer from 1 to 10000, got 'x'"):
        client.get(api.socket_path, "/v1/results", {"limit": "x"})


def test_unknown_parameter_is_400(api: ApiServer) -> None:
    with pytest.raises(ApiError, match="unknown parameter 'strem'"):
        client.get(api.socket_path, "/v1/results", {"strem": "s1"})


def test_post_is_405(api: ApiServer) -> None:
    status, body = raw_request(
        api.socket_path,
        b"POST /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    )
    assert status == 405
    assert "use GET" in body["error"]


def test_garbage_request_gets_json_error_and_server_survives(api: ApiServer) -> None:
    status, body = raw_request(api.socket_path, b"\x00\x01garbage\r\n\r\n")
    assert status == 400
    assert "error" in body
    assert client.get(api.socket_path, "/v1/status") == {"ok": True}


def test_oversized_body_is_413(api: ApiServer) -> None:
    status, _ = raw_request(
        api.socket_path, b"GET /v1/status HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n"
    )
    assert status == 413


def test_missing_socket_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ApiError, match="is the daemon running"):
        client.get(tmp_path / "none.sock", "/v1/status")


def test_unknown_stream_is_404(tmp_path: Path) -> None:
    path = tmp_path / "db"
    open_database(path, KEY, writer=True).close()
    server = ApiServer(
        tmp_path / "api.sock", open_database(path, KEY), dict, streams=lambda: ["configured"]
    )
    server.start()
    try:
        with pytest.raises(
            ApiError, match="404 unknown stream 'nosuch'; configured streams: configured"
        ):
            client.get(server.socket_path, "/v1/results", {"stream": "nosuch"})
        assert (
            client.get(server.socket_path, "/v1/summaries", {"stream": "configured"})["count"] == 0
        )
    finally:
        server.stop()


def test_results_carry_dequantized_outputs(api: ApiServer) -> None:
    data = client.get(api.socket_path, "/v1/results", {"limit": 1})
    assert data["results"][0]["outputs"] == [1.0]


def run_as_nobody(code: str) -> subprocess.CompletedProcess[str]:
    command = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        sys.executable,
        "-c",
        code,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv"
)
def test_roles_from_peer_credentials(tmp_path: Path) -> None:
    path = tmp_path / "db"
    connection = open_database(path, KEY, writer=True)
    writer = Writer(connection)
    writer.start()
    writer.put(
        [ResultRow("s1", "open", 1.0, "0" * 64, "a", 0.1, False, struct.pack("<d", 1.0), b"")]
    )
    writer.put(
        [ResultRow("s1", "secret", 2.0, "0" * 64, "b", 0.2, False, struct.pack("<d", 1.0), b"")]
    )
    writer.stop()

    folder = Path(tempfile.mkdtemp(prefix="edgeward-roles-"))
    folder.chmod(0o755)
    roles = ApiConfig(roles={"reader": RoleMembers(users=["nobody"])})
    server = ApiServer(
        folder / "api.sock",
        open_database(path, KEY),
        lambda: {"ok": True},
        socket_mode=0o666,
        role_of=lambda uid, gid: role_of(roles, uid, gid),
        may_read=lambda role, data_class: data_class == "open" or role == "admin",
    )
    server.add_routes({"/v1/erase": {"POST": lambda request: {}}}, {"POST /v1/erase": "admin"})
    server.start()
    try:
        reader = run_as_nobody(
            "from edgeward import client; from pathlib import Path; import json\n"
            f"path = Path('{folder}/api.sock')\n"
            "print(json.dumps(client.get(path, '/v1/results')))\n"
            "try:\n    client.post(path, '/v1/erase', {})\nexcept Exception as error:\n    print(error)\n"
        )
        assert reader.returncode == 0, reader.stderr
        results, refusal = reader.stdout.splitlines()
        assert [row["data_class"] for row in json.loads(results)["results"]] == ["open"]
        assert "403 POST /v1/erase needs role admin; uid 65534 has role reader" in refusal
        as_root = client.get(folder / "api.sock", "/v1/results")
        assert {row["data_class"] for row in as_root["results"]} == {"open", "secret"}
    finally:
        server.stop()
        connection.close()
        shutil.rmtree(folder, ignore_errors=True)

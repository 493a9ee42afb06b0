"""Store benchmarks: the writer against bare sqlcipher3 inserts, key opening cost, pruning pauses.

Run: .venv/bin/python benchmarks/store.py [--rows N]

1. Inserts per second through edgeward's Writer (rows queued in lists of 256
   from another thread, as the stream threads do) against bare sqlcipher3
   multi-row inserts of the same rows, 256 rows per transaction, in one
   thread. Both databases use a raw key, WAL and synchronous=NORMAL.
2. The cost of opening the database with a raw key against a passphrase
   (SQLCipher 4's default PBKDF2-HMAC-SHA512 with 256,000 iterations).
3. The longest pause that pruning causes to ingest: the highest latency of
   a flush barrier, probed every 20 ms, while rows stream in, with and without
   a retention pass that deletes old rows in batches.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import sqlcipher3

from edgeward.config import load_config_text
from edgeward.store.database import open_database
from edgeward.store.retention import Pruner
from edgeward.store.rows import ResultRow
from edgeward.store.schema import MIGRATIONS, split_statements
from edgeward.store.writer import ROWS_PER_INSERT, Writer

KEY = bytes(range(32))
BATCH = 256


def make_rows(count: int) -> list[ResultRow]:
    outputs = struct.pack("<2d", 0.9, 0.1)
    return [
        ResultRow(
            "bench", "inference", float(i), "0" * 64, "normal", 0.9, False, outputs, b"\x7f\x81"
        )
        for i in range(count)
    ]


def writer_rate(path: Path, rows: list[ResultRow]) -> float:
    connection = open_database(path, KEY, writer=True)
    writer = Writer(connection, batch_size=BATCH, batch_interval=0.05)
    writer.start()
    started = time.perf_counter()
    for start in range(0, len(rows), BATCH):
        writer.put(rows[start : start + BATCH])
    writer.flush()
    elapsed = time.perf_counter() - started
    writer.stop()
    connection.close()
    return len(rows) / elapsed


def bare_rate(path: Path, rows: list[ResultRow]) -> float:
    connection = sqlcipher3.connect(str(path), isolation_level=None)
    connection.execute(f"PRAGMA key = \"x'{KEY.hex()}'\"")
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")
    for migration in MIGRATIONS:
        for statement in split_statements(migration):
            connection.execute(statement)
    values = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    started = time.perf_counter()
    for start in range(0, len(rows), BATCH):
        now = time.time()
        connection.execute("BEGIN")
        chunk = rows[start : start + BATCH]
        for part_start in range(0, len(chunk), ROWS_PER_INSERT):
            part = chunk[part_start : part_start + ROWS_PER_INSERT]
            parameters: list[Any] = []
            for r in part:
                parameters += (
                    r.stream,
                    r.data_class,
                    r.ts,
                    r.model_sha256,
                    r.label,
                    r.score,
                    int(r.anomaly),
                    r.outputs,
                    r.raw_output,
                    now,
                    0,
                )
            connection.execute(
                "INSERT INTO results (stream, data_class, ts, model_sha256, label, score, anomaly,"
                f" outputs, raw_output, stored_at, sealed) VALUES {', '.join([values] * len(part))}",
                parameters,
            )
        connection.execute("COMMIT")
    elapsed = time.perf_counter() - started
    connection.close()
    return len(rows) / elapsed


def open_cost(path: Path, passphrase: bool) -> float:
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        connection = sqlcipher3.connect(str(path))
        key = "'edgeward benchmark passphrase'" if passphrase else f"\"x'{KEY.hex()}'\""
        connection.execute(f"PRAGMA key = {key}")
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
        timings.append(time.perf_counter() - started)
        connection.close()
    return statistics.median(timings)


def make_passphrase_database(path: Path) -> None:
    connection = sqlcipher3.connect(str(path))
    connection.execute("PRAGMA key = 'edgeward benchmark passphrase'")
    connection.execute("CREATE TABLE t (x)")
    connection.commit()
    connection.close()


def longest_ingest_pause(path: Path, stored: int, prune: bool) -> float:
    config = load_config_text("device_id: d\ndata_classes:\n  inference: {retention: 1s}\n")
    connection = open_database(path, KEY, writer=True)
    writer = Writer(connection, batch_size=BATCH, batch_interval=0.01)
    writer.start()
    rows = make_rows(stored)
    for start in range(0, len(rows), BATCH):
        writer.put(rows[start : start + BATCH])
    writer.flush()
    time.sleep(1.1)

    stop = threading.Event()
    pauses: list[float] = []

    def ingest() -> None:
        fresh = make_rows(BATCH)
        while not stop.is_set():
            writer.put(fresh)
            time.sleep(0.01)

    def probe() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            writer.flush()
            pauses.append(time.perf_counter() - started)
            time.sleep(0.02)

    threads = [threading.Thread(target=ingest), threading.Thread(target=probe)]
    for thread in threads:
        thread.start()
    if prune:
        Pruner(config, writer, open_database(path, KEY), threading.Lock()).run_once()
    else:
        time.sleep(3)
    stop.set()
    for thread in threads:
        thread.join()
    writer.stop()
    connection.close()
    return max(pauses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, default=200_000, help="rows to insert (default: %(default)s)"
    )
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="edgeward-store-bench-") as folder:
        base = Path(folder)
        rows = make_rows(arguments.rows)
        writer_runs = [writer_rate(base / f"writer{i}.db", rows) for i in range(3)]
        bare_runs = [bare_rate(base / f"bare{i}.db", rows) for i in range(3)]
        writer_figure = statistics.median(writer_runs)
        bare_figure = statistics.median(bare_runs)

        make_passphrase_database(base / "passphrase.db")
        raw_open = open_cost(base / "writer0.db", passphrase=False)
        passphrase_open = open_cost(base / "passphrase.db", passphrase=True)

        pause_idle = longest_ingest_pause(base / "pause-idle.db", 100_000, prune=False)
        pause_prune = longest_ingest_pause(base / "pause-prune.db", 100_000, prune=True)

    figures = {
        "rows": arguments.rows,
        "writer_rows_per_second": round(writer_figure),
        "bare_rows_per_second": round(bare_figure),
        "writer_ratio": round(writer_figure / bare_figure, 3),
        "open_raw_key_ms": round(raw_open * 1000, 2),
        "open_passphrase_ms": round(passphrase_open * 1000, 2),
        "longest_flush_ms_without_pruning": round(pause_idle * 1000, 1),
        "longest_flush_ms_while_pruning_100k_rows": round(pause_prune * 1000, 1),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

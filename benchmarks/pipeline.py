"""Benchmark the edgeward daemon against a bare loop doing the same work.

Three measurements, each for every installed TFLite runtime:

1. Throughput and CPU seconds per window: `edgeward run --until-done` on a
   CSV replay (`playback: fast`, MQTT disabled) against a bare loop in one
   function that reads the same CSV, cuts the same windows, quantizes,
   invokes and batch-inserts the results into a SQLCipher database.
   Steady-state figures come from the difference between a large and a tiny
   input, so the fixed start and stop cost cancels out. That cost is
   reported separately.
2. RSS of the daemon after running on a realtime synthetic source, against
   a process that has only imported the same libraries and loaded the model.
3. Idle CPU of the daemon, as a percentage of one core, after its replay has
   ended and while a synthetic source delivers one sample per second.

Usage: .venv/bin/python benchmarks/pipeline.py [--model PATH] [--quick] [--json PATH]

The CSV input is generated from edgeward's seeded SyntheticSignal into a
temporary folder, which is deleted afterwards.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib
import importlib.metadata
import importlib.util
import itertools
import json
import os
import platform
import re
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import sqlcipher3

from edgeward.agent.synthetic import SyntheticSignal
from edgeward.store.schema import MIGRATIONS

REPO = Path(__file__).resolve().parent.parent
# The first model found is the default: the project's demo model, else its HAR model.
DEFAULT_MODELS = (REPO / "models" / "demo_anomaly_int8.tflite", REPO / "models" / "har_int8.tflite")
RUNTIME_MODULES = {
    "litert": "ai_edge_litert.interpreter",
    "tflite-runtime": "tflite_runtime.interpreter",
}

STREAM_NAME = "bench"
SAMPLE_RATE_HZ = 50.0
FIRST_TIMESTAMP = 1_700_000_000.0
SEED = 7
INSERT_BATCH_ROWS = 256
INSERT_STATEMENT_ROWS = 200
CSV_BLOCK_ROWS = 4096

# Targets: daemon/bare throughput and bare/daemon CPU per window at least 0.7,
# daemon/bare RSS at most 1.2, idle CPU below 1 % of one core.
MIN_THROUGHPUT_RATIO = 0.7
MIN_CPU_RATIO = 0.7
MAX_RSS_RATIO = 1.2
MAX_IDLE_CPU_PERCENT = 1.0

LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
STREAM_STARTED = re.compile(r"stream (\S+) started")
STREAM_STOPPED = re.compile(r"stream (\S+) stopped after (\d+) windows")
COMMITTED = re.compile(r"committed (\d+) results and (\d+) summaries")


@dataclass(frozen=True)
class Geometry:
    """Window length and hop in samples, and values per sample, of the model's input windows."""

    window: int
    hop: int
    channels: int

    def windows_in(self, rows: int) -> int:
        return 0 if rows < self.window else (rows - self.window) // self.hop + 1


@dataclass
class Settings:
    """One benchmark run's parameters, shared by every runtime."""

    model: Path
    geometry: Geometry
    rows: int
    tiny_rows: int
    repeats: int
    rss_seconds: float
    idle_seconds: float
    realtime_rate_hz: float
    workdir: Path


@dataclass
class RunFigures:
    """Times in seconds and the window count of one run of the daemon or the bare loop.

    `busy` runs from the start of processing (after the model is loaded and
    the database is open) to the commit of the last result. `wall` and `cpu`
    cover the whole run, and for the daemon that includes its start and stop.
    """

    wall: float
    cpu: float
    busy: float
    windows: int
    startup: float | None = None


# --- Input data and configs -------------------------------------------------


def write_csv(path: Path, rows: int, channels: int) -> None:
    """Write `rows` samples of the seeded synthetic signal with a time column `t` in epoch seconds."""
    signal_source = SyntheticSignal(SEED, channels, SAMPLE_RATE_HZ)
    names = [f"c{i}" for i in range(channels)]
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["t", *names])
        written = 0
        while written < rows:
            count = min(4096, rows - written)
            values, _ = signal_source.read(count)
            times = FIRST_TIMESTAMP + (written + np.arange(count)) / SAMPLE_RATE_HZ
            for timestamp, sample in zip(times, values, strict=True):
                writer.writerow([f"{timestamp:.3f}", *(f"{v:.6f}" for v in sample)])
            written += count


def write_key_file(path: Path) -> None:
    path.write_text(os.urandom(32).hex() + "\n")
    path.chmod(0o600)


def write_daemon_config(
    run_dir: Path, runtime: str, model: Path, geometry: Geometry, source: str
) -> Path:
    """Write a daemon config with one stream reading `source` (a YAML flow mapping)."""
    key_file = run_dir / "master.key"
    write_key_file(key_file)
    config = run_dir / "edgeward.yaml"
    config.write_text(
        f"""device_id: bench
database:
  path: {json.dumps(str(run_dir / "edgeward.db"))}
  key_file: {json.dumps(str(key_file))}
api:
  socket: {json.dumps(str(run_dir / "api.sock"))}
mqtt:
  enabled: false
runtime:
  tflite: {runtime}
  threads: 1
streams:
  - name: {STREAM_NAME}
    source: {source}
    window: {{size: {geometry.window}, hop: {geometry.hop}}}
    model:
      path: {json.dumps(str(model))}
      kind: classifier
"""
    )
    return config


def csv_source(path: Path, channels: int) -> str:
    columns = ", ".join(f"c{i}" for i in range(channels))
    return f"{{type: csv, path: [{json.dumps(str(path))}], columns: [{columns}], time_column: t, playback: fast}}"


def synthetic_source(channels: int, rate_hz: float) -> str:
    return f"{{type: synthetic, seed: {SEED}, channels: {channels}, rate_hz: {rate_hz}, playback: realtime}}"


# --- The daemon as a subprocess ---------------------------------------------


def edgeward_command() -> list[str]:
    script = Path(sys.executable).parent / "edgeward"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "edgeward.cli"]


class DaemonProcess:
    """`edgeward run` as a child process, reaped with os.wait4 for its rusage."""

    def __init__(self, config: Path, *args: str) -> None:
        self.stderr_path = config.with_suffix(".stderr")
        self._stderr = self.stderr_path.open("wb")
        self.spawned_at = time.time()
        self._spawned = time.perf_counter()
        self.process = subprocess.Popen(
            [*edgeward_command(), "run", "--config", str(config), *args],
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.pid = self.process.pid

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_for_log(self, pattern: re.Pattern[str], timeout: float) -> None:
        """Wait until a stderr line matches `pattern`.

        Raises RuntimeError when the daemon exits or `timeout` seconds pass first.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pattern.search(self.stderr):
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.process.returncode}:\n{self.stderr}")
            time.sleep(0.1)
        raise RuntimeError(f"daemon logged no line matching {pattern.pattern!r} within {timeout} s")

    def wait(self, timeout: float) -> tuple[float, float]:
        """Reap the daemon and return its wall time and CPU seconds (user + system, all threads).

        Kills the daemon and raises RuntimeError when it runs longer than `timeout` seconds.
        """
        timed_out = threading.Event()

        def kill_on_timeout() -> None:
            timed_out.set()
            self.process.kill()

        timer = threading.Timer(timeout, kill_on_timeout)
        timer.start()
        try:
            _, status, usage = os.wait4(self.pid, 0)
        finally:
            timer.cancel()
            self._stderr.close()
        wall = time.perf_counter() - self._spawned
        self.process.returncode = os.waitstatus_to_exitcode(status)
        if timed_out.is_set():
            raise RuntimeError(f"daemon timed out after {timeout:.0f} s and was killed")
        if self.process.returncode != 0:
            raise RuntimeError(
                f"daemon exited with {self.process.returncode}:\n{self.stderr[-4000:]}"
            )
        return wall, usage.ru_utime + usage.ru_stime

    def stop(self, timeout: float = 60.0) -> tuple[float, float]:
        self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.process.returncode is None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class WalWatcher:
    """Poll the mtime of a database's WAL file to find when the last transaction was written.

    Every commit writes to the -wal file, and SQLite deletes it when the last
    connection closes, so the newest mtime seen is the last commit. The file
    system stamps mtime with the kernel's coarse clock, a few ms behind.
    """

    def __init__(self, database: Path, interval: float = 0.01) -> None:
        self._path = database.with_name(database.name + "-wal")
        self._interval = interval
        self.last_write: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WalWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                mtime = self._path.stat().st_mtime_ns / 1e9
            except FileNotFoundError:
                continue
            if self.last_write is None or mtime > self.last_write:
                self.last_write = mtime


def log_time(line: str) -> float | None:
    """Return the epoch time of a log line written by edgeward's stderr handler (local time)."""
    match = LOG_TIME.match(line)
    if match is None:
        return None
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def run_daemon_replay(
    settings: Settings, runtime: str, csv_path: Path, run_dir: Path
) -> RunFigures:
    """Run the daemon with --until-done on a CSV replay and check that every window was committed."""
    run_dir.mkdir()
    geometry = settings.geometry
    config = write_daemon_config(
        run_dir, runtime, settings.model, geometry, csv_source(csv_path, geometry.channels)
    )
    with WalWatcher(run_dir / "edgeward.db") as wal:
        daemon = DaemonProcess(config, "--until-done")
        try:
            wall, cpu = daemon.wait(timeout=1800.0)
        finally:
            daemon.kill()

    text = daemon.stderr
    started_at = stopped_at = None
    windows = committed = None
    for line in text.splitlines():
        if started_at is None and STREAM_STARTED.search(line):
            started_at = log_time(line)
        if match := STREAM_STOPPED.search(line):
            stopped_at, windows = log_time(line), int(match.group(2))
        if match := COMMITTED.search(line):
            committed = int(match.group(1))
    if started_at is None or stopped_at is None or windows is None or committed is None:
        raise RuntimeError(
            f"daemon log lacks the stream start, stop or commit line:\n{text[-4000:]}"
        )
    if committed != windows:
        raise RuntimeError(f"daemon processed {windows} windows but committed {committed}")

    # The last window was queued at stopped_at and committed at most a batch
    # interval later. Without a WAL time, busy ends at stopped_at.
    last_commit = stopped_at if wal.last_write is None else max(stopped_at, wal.last_write)
    return RunFigures(
        wall=wall,
        cpu=cpu,
        busy=last_commit - started_at,
        windows=windows,
        startup=started_at - daemon.spawned_at,
    )


def read_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line")


def read_cpu_seconds(pid: int) -> float:
    """Return the CPU seconds that the threads of a running process have used so far.

    The first field of each thread's schedstat counts nanoseconds on a CPU,
    much finer than the 10 ms clock ticks of /proc/PID/stat.
    """
    total_ns = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total_ns += int((task / "schedstat").read_text().split()[0])
        except FileNotFoundError:
            continue  # the thread ended since the folder was listed
    return total_ns / 1e9


# --- The bare loop ----------------------------------------------------------


def bare_loop(
    runtime: str, model_path: Path, csv_path: Path, database: Path, geometry: Geometry
) -> tuple[int, float]:
    """Read the CSV, cut windows, quantize, invoke and insert the results.

    Returns the window count and the seconds from opening the CSV to the
    last commit.

    The results table is edgeward's own, and each row contains the same
    values that the daemon stores, so both write the same bytes per window.
    """
    interpreter_class = importlib.import_module(RUNTIME_MODULES[runtime]).Interpreter
    interpreter = interpreter_class(model_path=str(model_path), num_threads=1)
    interpreter.allocate_tensors()
    input_details = interpreter.get_input_details()[0]
    output_details = interpreter.get_output_details()[0]
    input_scale, input_zero_point = input_details["quantization"]
    output_scale, output_zero_point = output_details["quantization"]
    input_dtype = np.dtype(input_details["dtype"])
    input_limits = np.iinfo(input_dtype)
    input_shape = input_details["shape"]
    output_size = int(np.prod(output_details["shape"]))
    labels = [f"class_{i}" for i in range(output_size)]
    model_sha256 = hashlib.sha256(model_path.read_bytes()).hexdigest()

    connection = sqlcipher3.connect(str(database), isolation_level=None)
    connection.execute(f"PRAGMA key = \"x'{os.urandom(32).hex()}'\"")
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")
    connection.executescript(MIGRATIONS[0])
    row_values = "(?, ?, ?, ?, ?, ?, ?, ?, ?)"
    insert = (
        "INSERT INTO results (stream, data_class, ts, model_sha256, label, score, anomaly,"
        f" outputs, raw_output) VALUES {', '.join([row_values] * INSERT_STATEMENT_ROWS)}"
    )

    def insert_pending() -> None:
        # Multi-row statements, as the daemon's writer uses: the fastest way
        # found to insert with sqlcipher3, so the bare figure stays the limit.
        connection.execute("BEGIN")
        for start in range(0, len(pending), INSERT_STATEMENT_ROWS):
            part = pending[start : start + INSERT_STATEMENT_ROWS]
            statement = (
                insert
                if len(part) == INSERT_STATEMENT_ROWS
                else (
                    insert.split(" VALUES ")[0] + " VALUES " + ", ".join([row_values] * len(part))
                )
            )
            connection.execute(statement, [value for row in part for value in row])
        connection.execute("COMMIT")
        pending.clear()

    started = time.perf_counter()
    pending: list[tuple[Any, ...]] = []
    windows = 0
    # Samples left over from the previous block: the start of the next window.
    carried = np.empty((0, 1 + geometry.channels), dtype=np.float64)
    with csv_path.open(newline="") as file:
        reader = csv.reader(file)
        next(reader)
        while block_rows := list(itertools.islice(reader, CSV_BLOCK_ROWS)):
            block = np.array([[float(cell) for cell in row] for row in block_rows])
            samples = np.concatenate([carried, block[:, : 1 + geometry.channels]])
            start = 0
            while start + geometry.window <= len(samples):
                end = start + geometry.window
                quantized = np.rint(samples[start:end, 1:] / input_scale) + input_zero_point
                tensor = np.clip(quantized, input_limits.min, input_limits.max).astype(input_dtype)
                interpreter.set_tensor(input_details["index"], tensor.reshape(input_shape))
                interpreter.invoke()
                raw = interpreter.get_tensor(output_details["index"])
                outputs = ((raw.astype(np.float64) - output_zero_point) * output_scale).reshape(-1)
                best = int(np.argmax(outputs))
                pending.append(
                    (
                        STREAM_NAME,
                        "inference",
                        float(samples[end - 1, 0]),
                        model_sha256,
                        labels[best],
                        float(outputs[best]),
                        0,
                        json.dumps(outputs.tolist()),
                        raw.tobytes(),
                    )
                )
                windows += 1
                start += geometry.hop
                if len(pending) >= INSERT_BATCH_ROWS:
                    insert_pending()
            carried = samples[start:]

    if pending:
        insert_pending()
    busy = time.perf_counter() - started
    connection.close()
    return windows, busy


def run_bare_worker(parameters: dict[str, Any]) -> dict[str, Any]:
    """Time bare_loop() in this process, which imported only what the loop needs."""
    geometry = Geometry(**parameters["geometry"])
    importlib.import_module(RUNTIME_MODULES[parameters["runtime"]])
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    windows, busy = bare_loop(
        parameters["runtime"],
        Path(parameters["model"]),
        Path(parameters["csv"]),
        Path(parameters["database"]),
        geometry,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"wall": wall, "cpu": cpu, "busy": busy, "windows": windows}


def run_baseline_rss_worker(parameters: dict[str, Any]) -> dict[str, Any]:
    """Import the daemon's third-party libraries, load and invoke the model once, return VmRSS."""
    import cryptography.hazmat.primitives.kdf.hkdf  # noqa: F401
    import paho.mqtt.client  # noqa: F401
    import yaml  # noqa: F401

    interpreter_class = importlib.import_module(RUNTIME_MODULES[parameters["runtime"]]).Interpreter
    interpreter = interpreter_class(model_path=parameters["model"], num_threads=1)
    interpreter.allocate_tensors()
    details = interpreter.get_input_details()[0]
    interpreter.set_tensor(details["index"], np.zeros(details["shape"], dtype=details["dtype"]))
    interpreter.invoke()
    return {"rss_kib": read_rss_kib(os.getpid())}


def run_worker(kind: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """Run this script as a worker subprocess and return the JSON it prints."""
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", kind, json.dumps(parameters)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{kind} worker failed with {completed.returncode}:\n{completed.stderr}")
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def run_bare(settings: Settings, runtime: str, csv_path: Path, run_dir: Path) -> RunFigures:
    run_dir.mkdir()
    parameters = {
        "runtime": runtime,
        "model": str(settings.model),
        "csv": str(csv_path),
        "database": str(run_dir / "bare.db"),
        "geometry": asdict(settings.geometry),
    }
    figures = run_worker("bare", parameters)
    return RunFigures(figures["wall"], figures["cpu"], figures["busy"], figures["windows"])


# --- Measurements -----------------------------------------------------------


def steady_state(large: RunFigures, tiny: RunFigures) -> dict[str, float]:
    """Return steady-state throughput and CPU per window, and the fixed costs around them.

    Both come from the difference between a large and a tiny run: extra
    windows over extra busy time, and extra CPU time over extra windows. So
    start-up, shutdown and the daemon's wait for its first batch interval
    cancel out.
    """
    extra_windows = large.windows - tiny.windows
    busy_per_window = (large.busy - tiny.busy) / extra_windows
    cpu_per_window = (large.cpu - tiny.cpu) / extra_windows
    return {
        "windows_per_second": 1.0 / busy_per_window,
        "cpu_ms_per_window": cpu_per_window * 1000.0,
        "busy_seconds": large.busy,
        "fixed_wall_seconds": large.wall - extra_windows * busy_per_window,
        "fixed_cpu_seconds": tiny.cpu - tiny.windows * cpu_per_window,
        "end_to_end_windows_per_second": large.windows / large.wall,
    }


def median_of(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def measure_throughput(
    settings: Settings, runtime: str, large_csv: Path, tiny_csv: Path
) -> dict[str, Any]:
    """Alternate daemon and bare runs `repeats` times and return the medians.

    Each ratio is the median of the per-repeat ratios, because a daemon run
    and the bare run after it see about the same load from other processes.
    """
    daemon_runs: list[dict[str, float]] = []
    bare_runs: list[dict[str, float]] = []
    startups: list[float] = []
    windows = 0
    for repeat in range(settings.repeats):
        base = settings.workdir / f"{runtime}-throughput-{repeat}"
        base.mkdir()
        daemon_tiny = run_daemon_replay(settings, runtime, tiny_csv, base / "daemon-tiny")
        daemon_large = run_daemon_replay(settings, runtime, large_csv, base / "daemon-large")
        bare_tiny = run_bare(settings, runtime, tiny_csv, base / "bare-tiny")
        bare_large = run_bare(settings, runtime, large_csv, base / "bare-large")
        expected = (
            settings.geometry.windows_in(settings.rows),
            settings.geometry.windows_in(settings.tiny_rows),
        )
        for name, large, tiny in (
            ("daemon", daemon_large, daemon_tiny),
            ("bare loop", bare_large, bare_tiny),
        ):
            if (large.windows, tiny.windows) != expected:
                raise RuntimeError(
                    f"{name} processed {large.windows} and {tiny.windows} windows, expected {expected[0]} and {expected[1]}"
                )
        windows = daemon_large.windows
        daemon_runs.append(steady_state(daemon_large, daemon_tiny))
        bare_runs.append(steady_state(bare_large, bare_tiny))
        startups.extend(
            run.startup for run in (daemon_tiny, daemon_large) if run.startup is not None
        )
        progress(
            f"{runtime} throughput repeat {repeat + 1}/{settings.repeats}: daemon "
            f"{daemon_runs[-1]['windows_per_second']:.0f} windows/s, "
            f"bare {bare_runs[-1]['windows_per_second']:.0f} windows/s"
        )

    keys = daemon_runs[0].keys()
    daemon = {key: median_of(daemon_runs, key) for key in keys}
    bare = {key: median_of(bare_runs, key) for key in keys}
    daemon["startup_seconds"] = statistics.median(startups) if startups else float("nan")
    paired = list(zip(daemon_runs, bare_runs, strict=True))
    throughput_ratio = statistics.median(
        d["windows_per_second"] / b["windows_per_second"] for d, b in paired
    )
    cpu_ratio = statistics.median(
        b["cpu_ms_per_window"] / d["cpu_ms_per_window"] for d, b in paired
    )
    return {
        "windows": windows,
        "daemon": daemon,
        "bare": bare,
        "throughput_ratio": throughput_ratio,
        "cpu_ratio": cpu_ratio,
        "throughput_target_met": throughput_ratio >= MIN_THROUGHPUT_RATIO,
        "cpu_target_met": cpu_ratio >= MIN_CPU_RATIO,
        "repeats": {"daemon": daemon_runs, "bare": bare_runs},
    }


def measure_rss(settings: Settings, runtime: str) -> dict[str, Any]:
    """Sample the daemon's VmRSS each second on a realtime synthetic source and compare it with a bare process."""
    run_dir = settings.workdir / f"{runtime}-rss"
    run_dir.mkdir()
    geometry = settings.geometry
    source = synthetic_source(geometry.channels, settings.realtime_rate_hz)
    config = write_daemon_config(run_dir, runtime, settings.model, geometry, source)
    daemon = DaemonProcess(config, "--duration", str(settings.rss_seconds + 120))
    samples: list[int] = []
    try:
        daemon.wait_for_log(re.compile(r"running with \d+ streams"), timeout=60)
        deadline = time.monotonic() + settings.rss_seconds
        while time.monotonic() < deadline:
            samples.append(read_rss_kib(daemon.pid))
            time.sleep(1.0)
        samples.append(read_rss_kib(daemon.pid))
        daemon.stop()
    finally:
        daemon.kill()

    baseline = run_worker("baseline-rss", {"runtime": runtime, "model": str(settings.model)})
    ratio = samples[-1] / baseline["rss_kib"]
    return {
        "seconds": settings.rss_seconds,
        "source_rate_hz": settings.realtime_rate_hz,
        "daemon_rss_kib": samples[-1],
        "daemon_max_rss_kib": max(samples),
        "daemon_first_rss_kib": samples[0],
        "bare_rss_kib": baseline["rss_kib"],
        "ratio": ratio,
        "target_met": ratio <= MAX_RSS_RATIO,
    }


def measure_idle(settings: Settings, runtime: str, tiny_csv: Path) -> dict[str, Any]:
    """Measure the daemon's CPU use after its replay ended and while a source sends 1 sample/s."""
    geometry = settings.geometry
    scenarios = {
        "source_ended": (
            csv_source(tiny_csv, geometry.channels),
            re.compile(rf"stream {STREAM_NAME} stopped after"),
        ),
        "one_sample_per_second": (
            synthetic_source(geometry.channels, 1.0),
            re.compile(r"running with \d+ streams"),
        ),
    }
    figures: dict[str, Any] = {"seconds": settings.idle_seconds}
    for name, (source, ready) in scenarios.items():
        run_dir = settings.workdir / f"{runtime}-idle-{name}"
        run_dir.mkdir()
        config = write_daemon_config(run_dir, runtime, settings.model, geometry, source)
        daemon = DaemonProcess(config, "--duration", str(settings.idle_seconds + 120))
        try:
            daemon.wait_for_log(ready, timeout=60)
            time.sleep(2.0)  # let start-up work (the first commit, thread starts) finish
            cpu_before = read_cpu_seconds(daemon.pid)
            started = time.monotonic()
            time.sleep(settings.idle_seconds)
            cpu_after = read_cpu_seconds(daemon.pid)
            elapsed = time.monotonic() - started
            daemon.stop()
        finally:
            daemon.kill()
        percent = 100.0 * (cpu_after - cpu_before) / elapsed
        figures[name] = {"cpu_percent": percent, "target_met": percent < MAX_IDLE_CPU_PERCENT}
        progress(f"{runtime} idle CPU, {name}: {percent:.2f} % of one core")
    return figures


# --- Reporting --------------------------------------------------------------


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def machine_description() -> dict[str, Any]:
    cpu_model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str | None] = {}
    for package in ("numpy", "ai-edge-litert", "tflite-runtime", "sqlcipher3", "paho-mqtt"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "load_average_at_start": os.getloadavg(),
    }


def format_table(results: dict[str, Any]) -> str:
    """Format the figures as one table row per measurement and runtime."""
    header = ("runtime", "figure", "daemon", "bare", "ratio", "target", "met")
    rows: list[tuple[str, ...]] = []
    for runtime, figures in results["runtimes"].items():
        throughput = figures["throughput"]
        daemon, bare = throughput["daemon"], throughput["bare"]
        rows.append(
            (
                runtime,
                "windows/s (steady)",
                f"{daemon['windows_per_second']:.0f}",
                f"{bare['windows_per_second']:.0f}",
                f"{throughput['throughput_ratio']:.2f}",
                f">= {MIN_THROUGHPUT_RATIO}",
                yes_no(throughput["throughput_target_met"]),
            )
        )
        rows.append(
            (
                runtime,
                "CPU ms/window",
                f"{daemon['cpu_ms_per_window']:.3f}",
                f"{bare['cpu_ms_per_window']:.3f}",
                f"{throughput['cpu_ratio']:.2f}",
                f">= {MIN_CPU_RATIO}",
                yes_no(throughput["cpu_target_met"]),
            )
        )
        rows.append(
            (
                runtime,
                "windows/s (whole run)",
                f"{daemon['end_to_end_windows_per_second']:.0f}",
                f"{bare['end_to_end_windows_per_second']:.0f}",
                "",
                "",
                "",
            )
        )
        rows.append(
            (
                runtime,
                "fixed cost s (wall)",
                f"{daemon['fixed_wall_seconds']:.2f}",
                f"{bare['fixed_wall_seconds']:.2f}",
                "",
                "",
                "",
            )
        )
        rows.append((runtime, "start-up s", f"{daemon['startup_seconds']:.2f}", "", "", "", ""))
        rss = figures.get("rss")
        if rss:
            rows.append(
                (
                    runtime,
                    "RSS MiB",
                    f"{rss['daemon_rss_kib'] / 1024:.1f}",
                    f"{rss['bare_rss_kib'] / 1024:.1f}",
                    f"{rss['ratio']:.2f}",
                    f"<= {MAX_RSS_RATIO}",
                    yes_no(rss["target_met"]),
                )
            )
        idle = figures.get("idle")
        if idle:
            for name in ("source_ended", "one_sample_per_second"):
                rows.append(
                    (
                        runtime,
                        f"idle CPU % ({name.replace('_', ' ')})",
                        f"{idle[name]['cpu_percent']:.2f}",
                        "",
                        "",
                        f"< {MAX_IDLE_CPU_PERCENT}",
                        yes_no(idle[name]["target_met"]),
                    )
                )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def yes_no(value: bool) -> str:
    return "yes" if value else "NO"


# --- Command line -----------------------------------------------------------


def find_default_model() -> Path:
    for path in DEFAULT_MODELS:
        if path.exists():
            return path
    names = ", ".join(str(path.relative_to(REPO)) for path in DEFAULT_MODELS)
    raise SystemExit(f"pipeline.py: none of the default models exists ({names}); pass --model PATH")


def read_input_shape(model: Path) -> list[int]:
    """Load the model in the first installed runtime and return its input tensor's shape."""
    module = next(
        (name for name in RUNTIME_MODULES.values() if importlib.util.find_spec(name.split(".")[0])),
        None,
    )
    if module is None:
        raise SystemExit(
            "pipeline.py: no TFLite runtime is installed; install ai-edge-litert or tflite-runtime"
        )
    interpreter = importlib.import_module(module).Interpreter(model_path=str(model))
    return [int(d) for d in interpreter.get_input_details()[0]["shape"]]


def model_geometry(
    model: Path, window: int | None, hop: int | None, channels: int | None
) -> Geometry:
    """Derive window and channels from a [1, window, channels] input tensor unless given."""
    shape = read_input_shape(model)
    size = int(np.prod(shape))

    if channels is None:
        if len(shape) < 3:
            raise SystemExit(
                f"pipeline.py: cannot tell window and channels from the input shape {shape}; "
                "pass --channels (and --window)"
            )
        channels = shape[-1]
    if window is None:
        window = size // channels
    if window * channels != size:
        raise SystemExit(
            f"pipeline.py: a window of {window} samples x {channels} channels does not fill the "
            f"input tensor of shape {shape} ({size} values)"
        )

    if hop is None:
        hop = max(1, window // 2)
    if not 1 <= hop <= window:
        raise SystemExit(
            f"pipeline.py: --hop must be between 1 and the window length {window}, got {hop}"
        )
    return Geometry(window, hop, channels)


def installed_runtimes(requested: list[str] | None) -> list[str]:
    found = [
        name
        for name, module in RUNTIME_MODULES.items()
        if importlib.util.find_spec(module.split(".")[0])
    ]
    if requested:
        missing = [name for name in requested if name not in found]
        if missing:
            raise SystemExit(
                f"pipeline.py: runtime not installed: {', '.join(missing)}; install it or drop that --runtime"
            )
        return requested
    return found


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        type=Path,
        help="TFLite model with an int8 [1, window, channels] input "
        "(default: models/demo_anomaly_int8.tflite, else models/har_int8.tflite)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="200000 rows, 1 repeat, RSS after 15 s and idle CPU over 10 s",
    )
    parser.add_argument(
        "--runtime",
        action="append",
        choices=sorted(RUNTIME_MODULES),
        help="measure only this runtime; repeat for several (default: every installed one)",
    )

    parser.add_argument(
        "--rows",
        type=int,
        help="CSV rows of the large replay (default: 1000000, 200000 with --quick)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        help="runs per figure; the median is reported (default: 3, 1 with --quick)",
    )

    parser.add_argument(
        "--window", type=int, help="window length in samples (default: from the input shape)"
    )
    parser.add_argument("--hop", type=int, help="hop in samples (default: half the window)")
    parser.add_argument(
        "--channels", type=int, help="values per sample (default: the input shape's last dimension)"
    )

    parser.add_argument(
        "--skip",
        action="append",
        choices=["rss", "idle"],
        default=[],
        help="skip the RSS or the idle measurement; repeat for both",
    )
    parser.add_argument(
        "--json",
        type=Path,
        help="write the figures as JSON to this file ('-' for stdout, which moves the table to stderr)",
    )

    # Internal: run one measurement in a fresh process (see run_worker).
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("worker_parameters", nargs="?", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    arguments = parse_arguments()
    if arguments.worker:
        workers = {"bare": run_bare_worker, "baseline-rss": run_baseline_rss_worker}
        print(json.dumps(workers[arguments.worker](json.loads(arguments.worker_parameters))))
        return 0

    model = (arguments.model or find_default_model()).resolve()
    if not model.is_file():
        raise SystemExit(f"pipeline.py: model {model} not found; check --model")
    geometry = model_geometry(model, arguments.window, arguments.hop, arguments.channels)
    runtimes = installed_runtimes(arguments.runtime)
    quick = arguments.quick
    rows = arguments.rows or (200_000 if quick else 1_000_000)
    repeats = arguments.repeats or (1 if quick else 3)
    # The tiny replay yields 5 windows: enough to start and stop every part.
    tiny_rows = geometry.window + 4 * geometry.hop
    if rows < tiny_rows + 100 * geometry.hop:
        raise SystemExit(
            f"pipeline.py: --rows {rows} is too small; use at least {tiny_rows + 100 * geometry.hop}"
        )
    if repeats < 1:
        raise SystemExit(f"pipeline.py: --repeats must be at least 1, got {repeats}")

    with tempfile.TemporaryDirectory(prefix="edgeward-bench-") as temporary:
        workdir = Path(temporary)
        settings = Settings(
            model=model,
            geometry=geometry,
            rows=rows,
            tiny_rows=tiny_rows,
            repeats=repeats,
            rss_seconds=15.0 if quick else 60.0,
            idle_seconds=10.0 if quick else 30.0,
            realtime_rate_hz=100.0,
            workdir=workdir,
        )
        large_csv = workdir / "large.csv"
        tiny_csv = workdir / "tiny.csv"
        write_csv(large_csv, rows, geometry.channels)
        write_csv(tiny_csv, tiny_rows, geometry.channels)

        results: dict[str, Any] = {
            "command": shlex.join([os.path.relpath(sys.executable), *sys.argv]),
            "machine": machine_description(),
            "model": {
                "path": str(model.relative_to(REPO) if model.is_relative_to(REPO) else model),
                "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
            },
            "geometry": asdict(geometry),
            "rows": {"large": rows, "tiny": tiny_rows, "sample_rate_hz": SAMPLE_RATE_HZ},
            "targets": {
                "min_throughput_ratio": MIN_THROUGHPUT_RATIO,
                "min_cpu_ratio": MIN_CPU_RATIO,
                "max_rss_ratio": MAX_RSS_RATIO,
                "max_idle_cpu_percent": MAX_IDLE_CPU_PERCENT,
            },
            "runtimes": {},
        }
        for runtime in runtimes:
            figures: dict[str, Any] = {
                "throughput": measure_throughput(settings, runtime, large_csv, tiny_csv)
            }
            if "rss" not in arguments.skip:
                figures["rss"] = measure_rss(settings, runtime)
            if "idle" not in arguments.skip:
                figures["idle"] = measure_idle(settings, runtime, tiny_csv)
            results["runtimes"][runtime] = figures
        results["machine"]["load_average_at_end"] = os.getloadavg()

    table = format_table(results)
    if arguments.json is not None and str(arguments.json) == "-":
        print(table, file=sys.stderr)
        print(json.dumps(results, indent=2))
    else:
        print(table)
        if arguments.json is not None:
            arguments.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

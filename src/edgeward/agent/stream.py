"""One stream's worker thread: source, bad-input filter, windows, model, results and summaries."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import numpy as np

from edgeward.agent.inference import Model
from edgeward.agent.payloads import (
    alert_payload,
    alert_topic,
    new_message_id,
    summary_payload,
    summary_topic,
)
from edgeward.agent.replay import ReplaySource
from edgeward.agent.sanitize import SampleFilter
from edgeward.agent.sources import SegmentBreak, SyntheticSource, source_channels
from edgeward.agent.summaries import Summary, SummaryAggregator
from edgeward.agent.windowing import Windower
from edgeward.config.schema import Config, SourceConfig, StreamConfig, SyntheticSourceConfig
from edgeward.errors import InferenceError
from edgeward.ratelimit import RateLimitedLog
from edgeward.security.keystore import KeyStore, scope_name
from edgeward.store.ledger import ConsentLedger
from edgeward.store.rows import AlertRow, ResultRow, SummaryRow
from edgeward.store.sealed import seal_result
from edgeward.store.writer import Writer

log = logging.getLogger(__name__)


class StreamWorker:
    """Run one stream from its source to the writer queue in a thread of its own."""

    def __init__(
        self,
        config: Config,
        stream: StreamConfig,
        model: Model,
        writer: Writer,
        last_seq: int,
        ledger: ConsentLedger | None = None,
        keystore: KeyStore | None = None,
        last_alert_seq: int = 0,
    ) -> None:
        self.stream = stream
        self.name = stream.name
        self.model = model
        self._writer = writer
        self._device_id = config.device_id
        self._topic = summary_topic(config.mqtt.topic_prefix, config.device_id, stream.name)
        self._seq = last_seq
        self._alert_topic = alert_topic(config.mqtt.topic_prefix, config.device_id, stream.name)
        # With the uplink disabled, summaries and alerts stay on the device.
        self._local_only = not config.mqtt.enabled
        self._alert_seq = last_alert_seq
        self._alert_class = stream.alert_class or stream.summary_class
        # Stream time of the last alert; the next one comes alert_interval later at the earliest.
        self._last_alert_ts: float | None = None
        self._alerts = 0
        self._ledger = ledger
        # Restricted-tier results are sealed under the (class, subject) data key.
        self._keystore = keystore
        self._scope: str | None = None
        if keystore is not None and config.data_classes[stream.data_class].tier == "restricted":
            self._scope = scope_name(stream.data_class, stream.subject)
        # Data classes this stream is not storing for lack of consent.
        self._withholding: set[str] = set()
        self._summaries = 0

        channels = source_channels(stream.source)
        self.filter = SampleFilter(stream.name, stream.bad_input, channels)
        self._source = _open_source(stream.source, self.filter)
        self._windower = Windower(stream.window.size, stream.window.hop, channels)
        self._aggregator = SummaryAggregator(stream.name, config.summaries.interval)
        # Each line also carries the stream, model and data class as journal
        # fields (STREAM=, MODEL=, DATA_CLASS=), for journalctl STREAM=name.
        self._log = logging.LoggerAdapter(
            log,
            {"STREAM": stream.name, "MODEL": str(model.path), "DATA_CLASS": stream.data_class},
        )
        self._errors = RateLimitedLog(self._log, stream.bad_input.log_interval)

        self.finished = threading.Event()
        self.last_result_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"edgeward-stream-{stream.name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def request_stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def status(self) -> dict[str, Any]:
        counters = self.filter.counters
        return {
            "source": self.stream.source.type,
            "model": str(self.model.path),
            "model_sha256": self.model.sha256,
            "runtime": self.model.runtime,
            "data_class": self.stream.data_class,
            "finished": self.finished.is_set(),
            "samples": counters.samples,
            "windows": counters.windows,
            "anomalies": counters.anomalies,
            "skipped_samples": counters.skipped_samples,
            "filled_samples": counters.filled_samples,
            "malformed_lines": counters.malformed_lines,
            "missing_values": counters.missing_values,
            "nonfinite_values": counters.nonfinite_values,
            "time_regressions": counters.time_regressions,
            "inference_errors": counters.inference_errors,
            "withheld_no_consent": counters.withheld_no_consent,
            "summaries": self._summaries,
            "last_seq": self._seq,
            "alerts": self._alerts,
            "last_result_at": self.last_result_at,
        }

    def _run(self) -> None:
        self._log.info(
            "stream %s started (source %s, model %s)",
            self.name,
            self.stream.source.type,
            self.model.path,
        )
        try:
            for chunk in self._source.chunks(self._stop):
                if isinstance(chunk, SegmentBreak):
                    self._windower.reset()
                    continue
                times, values = chunk
                self._process(self._windower.push(times, values))
        except Exception:
            self._log.exception("stream %s stopped on an unexpected error", self.name)
        finally:
            self._emit(self._aggregator.flush())
            self.finished.set()
            self._log.info(
                "stream %s stopped after %d windows", self.name, self.filter.counters.windows
            )

    def _process(self, windows: list[tuple[float, np.ndarray[Any, Any]]]) -> None:
        if not windows:
            return
        if not self._consented(self.stream.data_class):
            # Without consent a window is neither stored nor summarized.
            self.filter.counters.withheld_no_consent += len(windows)
            return
        rows = []
        closed: list[Summary | None] = []
        for ts, window in windows:
            try:
                prediction = self.model.predict(window)
            except InferenceError as error:
                self.filter.counters.inference_errors += 1
                self._errors.warning("inference", "stream %s: window skipped: %s", self.name, error)
                continue
            self.filter.counters.windows += 1
            self.filter.counters.anomalies += int(prediction.anomaly)
            row = ResultRow(
                self.name,
                self.stream.data_class,
                ts,
                self.model.sha256,
                prediction.label,
                prediction.score,
                prediction.anomaly,
                prediction.outputs.astype("<f8").tobytes(),
                prediction.raw_output,
            )
            rows.append(self._seal(row) if self._scope is not None else row)
            if prediction.anomaly and self.stream.alerts:
                self._alert(ts, prediction.label, prediction.score)
            closed.append(
                self._aggregator.add(ts, prediction.label, prediction.score, prediction.anomaly)
            )
        if rows:
            self._writer.put(rows)
            self.last_result_at = time.time()
        # Queued after the results they count, so they commit in the same or a later batch.
        for summary in closed:
            self._emit(summary)

    def _alert(self, ts: float, label: str | None, score: float) -> None:
        last = self._last_alert_ts
        if last is not None and 0 <= ts - last < self.stream.alert_interval:
            return
        if not self._consented(self._alert_class):
            return
        self._last_alert_ts = ts
        self._alert_seq += 1
        self._alerts += 1
        message_id = new_message_id()
        detected_at = time.time()
        payload = alert_payload(
            self._device_id,
            self.name,
            self._alert_class,
            self._alert_seq,
            message_id,
            ts,
            label,
            score,
            self.model.sha256,
            detected_at,
        )
        # Queued before the window's result: the writer commits both in the
        # same or a later batch, and the uplink publishes alerts first.
        self._writer.put(
            AlertRow(
                stream=self.name,
                data_class=self._alert_class,
                seq=self._alert_seq,
                ts=ts,
                label=label,
                score=score,
                model_sha256=self.model.sha256,
                detected_at=detected_at,
                message_id=message_id,
                topic=self._alert_topic,
                payload=payload,
                local_only=self._local_only,
            )
        )

    def _seal(self, row: ResultRow) -> ResultRow:
        assert self._keystore is not None and self._scope is not None
        # Asked each time: after an erasure the scope gets a new key.
        payload = seal_result(self._keystore.key_for(self._scope), row)
        return ResultRow(
            row.stream,
            row.data_class,
            row.ts,
            row.model_sha256,
            None,
            0.0,
            False,
            b"",
            payload,
            sealed=True,
        )

    def _consented(self, data_class: str) -> bool:
        if self._ledger is None:
            return True
        missing = self._ledger.missing_purpose(self.stream.subject, data_class)
        # Log each change, not each window: when storing stops and when it resumes.
        if missing is None:
            if data_class in self._withholding:
                self._withholding.discard(data_class)
                self._log.info(
                    "stream %s: storing data of class %s again: consent is in force",
                    self.name,
                    data_class,
                )
            return True
        if data_class not in self._withholding:
            self._withholding.add(data_class)
            self._log.warning(
                "stream %s: not storing data of class %s: subject %s has no consent in force "
                "for purpose %s (edgeward consent grant)",
                self.name,
                data_class,
                self.stream.subject,
                missing,
            )
        return False

    def _emit(self, summary: Summary | None) -> None:
        if summary is None:
            return
        data_class = self.stream.summary_class
        if not self._consented(data_class):
            self.filter.counters.withheld_no_consent += 1
            return
        self._seq += 1
        self._summaries += 1
        message_id = new_message_id()
        payload = summary_payload(
            summary, self._device_id, data_class, self._seq, message_id, self.model.sha256
        )
        self._writer.put(
            SummaryRow(
                stream=self.name,
                data_class=data_class,
                seq=self._seq,
                period_start=summary.period_start,
                period_end=summary.period_end,
                windows=summary.windows,
                label_counts=json.dumps(summary.label_counts, sort_keys=True),
                mean_score=summary.mean_score,
                max_score=summary.max_score if summary.windows else 0.0,
                anomalies=summary.anomalies,
                model_sha256=self.model.sha256,
                created_at=time.time(),
                message_id=message_id,
                topic=self._topic,
                payload=payload,
                local_only=self._local_only,
            )
        )


def _open_source(
    config: SourceConfig, sample_filter: SampleFilter
) -> SyntheticSource | ReplaySource:
    if isinstance(config, SyntheticSourceConfig):
        return SyntheticSource(config, sample_filter)
    return ReplaySource(config, sample_filter)

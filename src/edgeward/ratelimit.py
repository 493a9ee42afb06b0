"""Rate-limited logging for errors that can repeat on every sample."""

from __future__ import annotations

import logging
import time


class RateLimitedLog:
    """Log a message at most once per interval per key, with the count of repeats since."""

    def __init__(
        self, logger: logging.Logger | logging.LoggerAdapter[logging.Logger], interval: float
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        repeats = self._suppressed.pop(key, 0)
        self._last[key] = now
        if repeats:
            self._logger.warning(message + " (%d more since the last report)", *args, repeats)
        else:
            self._logger.warning(message, *args)

"""The uplink's byte budget: a sliding window over the bytes published in the last period."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable


class ByteBudget:
    """Allow a message only while the bytes published in the last `period` seconds stay within the limit.

    Summaries may fill the budget up to (1 - alert_share) of the limit; only
    alerts may use the rest. A message larger than its whole allowance goes
    out alone once the window is empty, so it cannot block the link forever.
    """

    def __init__(
        self,
        limit: int | None,
        period: float,
        alert_share: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self._period = period
        self._alert_share = alert_share
        self._clock = clock
        self._spent: deque[tuple[float, int]] = deque()
        self._total = 0
        # The uplink thread spends and waits while API threads read `used`.
        self._lock = threading.Lock()

    def seed(self, entries: Iterable[tuple[float, int]]) -> None:
        """Count bytes published before this start; each entry is (seconds ago, bytes)."""
        now = self._clock()
        with self._lock:
            for age, size in sorted(entries, key=lambda entry: -entry[0]):
                if age < self._period:
                    self._spent.append((now - age, size))
                    self._total += size

    def wait(self, size: int, alert: bool) -> float:
        """Return 0 when a message of `size` bytes may go now, else the seconds until it may."""
        if self.limit is None:
            return 0.0
        with self._lock:
            return self._wait(size, alert)

    def _wait(self, size: int, alert: bool) -> float:
        assert self.limit is not None
        now = self._clock()
        self._expire(now)
        allowance = self.limit if alert else self.limit * (1.0 - self._alert_share)
        if self._total + size <= allowance or (size > allowance and self._total == 0):
            return 0.0
        needed = self._total + min(size, allowance) - allowance
        freed = 0
        for at, spent in self._spent:
            freed += spent
            if freed >= needed:
                return max(0.0, at + self._period - now)
        return self._period

    def spend(self, size: int) -> None:
        if self.limit is None:
            return
        with self._lock:
            self._spent.append((self._clock(), size))
            self._total += size

    @property
    def used(self) -> int:
        """Bytes published in the current window."""
        with self._lock:
            self._expire(self._clock())
            return self._total

    def _expire(self, now: float) -> None:
        while self._spent and self._spent[0][0] <= now - self._period:
            self._total -= self._spent.popleft()[1]

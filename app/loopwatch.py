"""How long the server's event loop was blocked: a tick every 20 ms, and how late each tick fired.

Every dashboard session and API request shares one Tornado loop; anything slow run on it freezes every user.
The watch is cheap (50 wake-ups a second) and its figures are served by ``GET /api/health``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque

INTERVAL_S = 0.02
STALL_S = 0.02  # a tick later than this is recorded as a stall


class LoopWatch:
    def __init__(self, interval: float = INTERVAL_S, keep: int = 2000) -> None:
        self.interval = interval
        self.stalls: deque[tuple[float, float]] = deque(maxlen=keep)  # (unix time, lag in seconds)
        self.max_lag = 0.0
        self.ticks = 0
        self.started_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._due = 0.0

    def start(self) -> None:
        """Start on the running loop of this thread (the server's); later calls do nothing."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            import tornado.ioloop

            loop = tornado.ioloop.IOLoop.current().asyncio_loop
        with self._lock:
            if self._loop is not None:
                return
            self._loop, self.started_at = loop, time.time()
        self._due = time.monotonic() + self.interval
        loop.call_soon_threadsafe(loop.call_later, self.interval, self._tick)

    def _tick(self) -> None:
        now = time.monotonic()
        lag = max(0.0, now - self._due)
        self.ticks += 1
        self.max_lag = max(self.max_lag, lag)
        if lag > STALL_S:
            self.stalls.append((time.time(), lag))
        self._due = now + self.interval
        self._loop.call_later(self.interval, self._tick)

    def snapshot(self, since: float | None = None) -> dict[str, object]:
        stalls = [(t, lag) for t, lag in list(self.stalls) if since is None or t >= since]
        return {"watching": self._loop is not None, "interval_ms": self.interval * 1000, "ticks": self.ticks,
                "since": since or self.started_at, "max_lag_ms": round(max((lag for _, lag in stalls),
                                                                           default=0.0) * 1000, 1),
                "max_lag_ms_since_start": round(self.max_lag * 1000, 1),
                "stalls_over_20ms": len(stalls), "stalls": [[round(t, 3), round(lag * 1000, 1)] for t, lag in stalls]}


WATCH = LoopWatch()

"""Stage timings and progress of a run's phases: the words progress shows and the seconds each stage took."""

from __future__ import annotations

import time
from collections.abc import Callable

StageProgress = Callable[[str, int, int], None]


class StageTimer:
    """Times consecutive stages (a stage may recur: its times add up) and reports each to ``progress``."""

    def __init__(self, progress: StageProgress | None) -> None:
        self.progress = progress
        self.timings: dict[str, float] = {}
        self._stage, self._start = None, 0.0

    def stage(self, name: str, done: int = 0, total: int = 0) -> None:
        self.finish()
        self._stage, self._start = str(name), time.perf_counter()  # plain text in timings and events
        self.report(done, total)

    def report(self, done: int, total: int) -> None:
        if self.progress:
            self.progress(self._stage, done, total)

    def say(self, text: str, done: int = 0, total: int = 0) -> None:
        """Report ``text`` with the stage's name (e.g. "embedding query: embeddings reused"), same timing."""
        if self.progress and self._stage:
            self.progress(f"{self._stage}: {text}", done, total)

    def finish(self) -> None:
        if self._stage:
            self.timings[self._stage] = round(self.timings.get(self._stage, 0) + time.perf_counter() - self._start, 3)
            self._stage = None

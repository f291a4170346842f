"""Progress of a long sync, logged every few seconds: pages, rows, rate, failures, limiter waits, ETA.

:class:`Progress` is also the ``log`` handed to the ``ResilientCaller``: it keeps the caller's
per-attempt success lines out of the task log (DEBUG; one line per page would drown it), passes
retries and errors through, and counts them and the time waited on the limiter.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from api_orchestration.calls.events import AttemptFinished, Granted, Next


class Progress:
    """Counts pages and rows and logs a summary line at most every ``every`` seconds."""

    def __init__(
        self,
        log: logging.Logger | logging.LoggerAdapter,
        label: str,
        *,
        every: float = 5.0,
        total_rows: int | None = None,
    ) -> None:
        self.log, self.label, self.every = log, label, every
        self.started = self._last = time.monotonic()
        self.pages = self.rows = self.failures = 0
        self.limiter_wait = 0.0
        self.total_rows = total_rows
        self.resumed_at = 0

    # -- the caller's events and log ---------------------------------------------------------------
    def __call__(self, event: Any) -> None:
        if isinstance(event, Granted):
            self.limiter_wait += event.wait
        elif isinstance(event, AttemptFinished) and event.next != Next.DONE:
            self.failures += 1

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.log.debug(msg, *args)

    debug = info

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.log.warning(msg, *args)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.log.error(msg, *args)

    def exception(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.log.exception(msg, *args)

    # -- the sync's progress ------------------------------------------------------------------------
    def page(self, rows: int, total_rows: int | None = None) -> None:
        self.pages += 1
        self.rows += rows
        if total_rows is not None:
            self.total_rows = total_rows
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self.log.info("%s", self.line())

    def line(self, final: bool = False) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.rows / elapsed
        text = (
            f"{self.label}: {'done, ' if final else ''}{self.pages} pages, {self.rows} rows in {elapsed:.1f} s "
            f"({rate:.0f} rows/s), {self.failures} failed attempts, {self.limiter_wait:.1f} s waited on the limiter"
        )
        if self.total_rows and not final:
            left = max(self.total_rows - self.rows, 0)
            text += f", {self.rows}/{self.total_rows} rows, ETA {left / rate:.0f} s" if rate > 0 else ""
        if self.resumed_at:
            text += f" (resumed after page {self.resumed_at})"
        return text

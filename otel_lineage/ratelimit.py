"""A logger wrapper that says each distinct problem at most once per interval.

Span hooks run for every span; a broken database or a bad span would otherwise log thousands
of identical tracebacks a second and become the outage.

``exception`` logs the exception's *type* at ERROR and its message and traceback at DEBUG
only: a database or driver error quotes the values it refused (a customer's email in a
rejected row), and logs above DEBUG leave the host.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any


class RateLimitedLogger:
    def __init__(self, logger: logging.Logger, interval_s: float = 60.0) -> None:
        self._logger = logger
        self._interval = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def _allow(self, msg: str) -> tuple[bool, int]:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(msg)
            if last is not None and now - last < self._interval:
                self._suppressed[msg] = self._suppressed.get(msg, 0) + 1
                return False, 0
            self._last[msg] = now
            return True, self._suppressed.pop(msg, 0)

    def exception(self, msg: str, *args: Any) -> None:
        allowed, suppressed = self._allow(msg)
        if allowed:
            suffix = f" ({suppressed} similar suppressed)" if suppressed else ""
            error = sys.exc_info()[1]
            kind = type(error).__qualname__ if error is not None else "error"
            self._logger.error(msg + ": %s" + suffix, *args, kind)
            self._logger.debug(msg, *args, exc_info=True)

    def warning(self, msg: str, *args: Any) -> None:
        allowed, suppressed = self._allow(msg)
        if allowed:
            suffix = f" ({suppressed} similar suppressed)" if suppressed else ""
            self._logger.warning(msg + suffix, *args)

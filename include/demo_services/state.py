"""Thread-safe call log and per-key counters of the demo API.

Every recorded request bumps the totals, the per-path counts and (when it carries an
``Idempotency-Key`` header) the per-key counts, and appends its arrival time to a bounded
per-path log. Behaviour endpoints (``/flaky``, ``/ratelimited``) keep their own per-key call
counts here too, and business services keep their state in *extensions* (one instance per
class, created on first use), so ``reset()`` returns the whole server to a clean slate.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

MAX_ARRIVALS = 100_000


class Extension(Protocol):
    """Per-server state kept by a service module; ``DemoState.reset()`` calls ``reset()``."""

    def reset(self) -> None: ...


E = TypeVar("E", bound=Extension)


class DemoState:
    """Counters shared by all request threads; every access holds one lock."""

    def __init__(self, max_arrivals: int = MAX_ARRIVALS) -> None:
        self._lock = threading.Lock()
        self._max_arrivals = max_arrivals
        self._total = 0
        self._paths: Counter[str] = Counter()
        self._keys: Counter[str] = Counter()
        self._by_path_and_key: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._arrivals: dict[str, deque[float]] = {}
        self._counts: Counter[tuple[str, str]] = Counter()
        self._extensions: dict[type, Extension] = {}
        self.started_at = time.time()

    def extension(self, kind: type[E], factory: Callable[[], E] | None = None) -> E:
        """This state's instance of ``kind``, created by ``factory`` (default ``kind()``) on first use."""
        found = self._extensions.get(kind)  # lock-free fast path: entries are never replaced
        if found is None:
            with self._lock:
                found = self._extensions.get(kind)
                if found is None:
                    found = self._extensions[kind] = (factory or kind)()
        return found  # type: ignore[return-value]

    def record(self, path: str, idempotency_key: str | None) -> None:
        """Log one request to ``path`` (without query) arriving now."""
        now = time.time()
        with self._lock:
            self._total += 1
            self._paths[path] += 1
            arrivals = self._arrivals.get(path)
            if arrivals is None:
                arrivals = self._arrivals[path] = deque(maxlen=self._max_arrivals)
            arrivals.append(now)
            if idempotency_key is not None:
                self._keys[idempotency_key] += 1
                self._by_path_and_key[path][idempotency_key] += 1

    def next_count(self, namespace: str, key: str) -> int:
        """Increment and return the call number (1-based) of ``key`` within ``namespace``."""
        with self._lock:
            self._counts[namespace, key] += 1
            return self._counts[namespace, key]

    def snapshot(self, path: str | None = None, arrivals: bool = False) -> dict[str, Any]:
        """Copy of the call log, optionally restricted to one path and with arrival times."""
        with self._lock:
            if path is None:
                paths = dict(self._paths)
                by_path = {p: dict(keys) for p, keys in self._by_path_and_key.items()}
                keys = dict(self._keys)
                times = {p: list(ts) for p, ts in self._arrivals.items()}
                total = self._total
            else:
                paths = {path: self._paths[path]} if path in self._paths else {}
                by_path = {path: dict(self._by_path_and_key[path])} if path in self._by_path_and_key else {}
                keys = dict(by_path.get(path, {}))
                times = {path: list(self._arrivals[path])} if path in self._arrivals else {}
                total = paths.get(path, 0)
        result: dict[str, Any] = {
            "total": total,
            "paths": paths,
            "idempotency_keys": keys,
            "by_path_and_key": by_path,
        }
        if arrivals:
            result["arrivals"] = times
        return result

    def reset(self) -> None:
        """Forget every call, arrival and per-key count, and reset every extension."""
        with self._lock:
            self._total = 0
            self._paths.clear()
            self._keys.clear()
            self._by_path_and_key.clear()
            self._arrivals.clear()
            self._counts.clear()
            extensions = list(self._extensions.values())
        for extension in extensions:
            extension.reset()

"""The two engines of bulk mode: many calls through one :class:`~api_orchestration.calls.guard.Guard`.

Both take ``request(i)`` (call i's ``method``, ``url`` and keyword arguments, ``cache_key`` among
them, and optionally the call's own ``guard``, from a :class:`~api_orchestration.calls.guard.KeyedGuards`:
bulk's per-item keys) and yield one row per call, in order: ``{"index", "ok": True, "status",
"result"}`` (plus ``"cached": True`` when the shared cache served it) or ``{"index", "ok": False,
"error", "limit_key", "breaker_key"}`` (the keys the call was under; ``breaker_key`` with a breaker
only; neither when ``request(i)`` itself failed with an :class:`~api_orchestration.errors.ApiOrchestrationError`,
e.g. a template that did not render). Calls under different keys are limited and broken apart:
the async engine batches admissions per key (:class:`~api_orchestration.calls.batching.AdmissionQueues`).

- :func:`call_concurrently_async` (the default): ``concurrency`` calls in flight on one asyncio
  event loop over aiohttp, admitted in batches (one store operation per batch, see
  :mod:`api_orchestration.calls.batching`). Measured at about 2,000 POSTs/s on a 2-core machine.
- :func:`call_concurrently`: ``concurrency`` threads, each with a ``requests.Session`` and a
  :class:`~api_orchestration.calls.requests_driver.ResilientCaller` (one store operation per call). ``requests`` in
  threads tops out near 700 calls/s there, whatever the store.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import aiohttp
import requests

from api_orchestration.calls.aiohttp_driver import AsyncCaller, new_session
from api_orchestration.calls.batching import AdmissionQueues
from api_orchestration.calls.events import default_events
from api_orchestration.calls.flow import HttpRequest
from api_orchestration.calls.guard import Guard, lease_seconds
from api_orchestration.calls.requests_driver import ResilientCaller
from api_orchestration.calls.responses import default_response_filter
from api_orchestration.errors import ApiOrchestrationError

try:  # a faster event loop when installed (Airflow's uvicorn[standard] brings it)
    from uvloop import new_event_loop as _new_loop
except ImportError:  # pragma: no cover
    _new_loop = None

Row = dict[str, Any]
POLL_SECONDS = 0.01  # how often the async engine hands finished rows to the consumer


@contextmanager
def _frozen_heap() -> Iterator[None]:
    """Keep full garbage collections off the objects that exist before the run (``gc.freeze``, as
    Airflow's executors do around forks): scanning a task process's heap stalls the event loop for
    up to 150 ms at a time, and calls late for their slots must take new ones."""
    frozen_before = gc.get_freeze_count()
    gc.freeze()
    try:
        yield
    finally:
        if not frozen_before:  # else someone else's freeze: leave it
            gc.unfreeze()


def _row(index: int, response: Any, select: Callable[[Any], Any] | None) -> Row:
    value = default_response_filter(response)
    row = {
        "index": index,
        "ok": True,
        "status": response.status_code,
        "result": select(value) if select else value,
    }
    if getattr(response, "from_cache", False):
        row["cached"] = True  # served from the shared cache (fresh, or refreshed by a 304)
    return row


def _failed(index: int, exc: ApiOrchestrationError, guard: Guard | None) -> Row:
    """A failed call's row, with the keys it was limited and broken under (None: it failed before
    it had any, e.g. a template that did not render)."""
    row: Row = {"index": index, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
    if guard is not None:
        row["limit_key"] = guard.limit_key
        if guard.breaker is not None:
            row["breaker_key"] = guard.breaker_key
    return row


def call_concurrently(
    count: int,
    request: Callable[[int], dict[str, Any]],
    *,
    guard: Guard,
    sessions: Callable[[], requests.Session],
    concurrency: int,
    timeout: float | tuple[float, float] = (10.0, 60.0),
    log: Any = None,
    select: Callable[[Any], Any] | None = None,
) -> Iterator[Row]:
    """The threads engine: each thread has its own session from ``sessions()`` and its own
    ``ResilientCaller`` sharing ``guard`` (so the shared limiter and breaker)."""
    local, callers, lock = threading.local(), [], threading.Lock()

    def one(index: int) -> Row:
        caller = getattr(local, "caller", None)
        if caller is None:  # each keeps its last verdict for its next admission
            caller = local.caller = ResilientCaller(sessions(), guard, timeout=timeout, log=log)
            with lock:
                callers.append(caller)
        call_guard = None
        try:
            kwargs = request(index)
            call_guard = kwargs.pop("guard", None) or guard
            response = caller.call(kwargs.pop("method"), kwargs.pop("url"), guard=call_guard, **kwargs)
            return _row(index, response, select)
        except ApiOrchestrationError as exc:
            return _failed(index, exc, call_guard)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        try:
            yield from pool.map(one, range(count))
        finally:
            for caller in callers:
                caller.flush()


def call_concurrently_async(
    count: int,
    request: Callable[[int], dict[str, Any]],
    *,
    guard: Guard,
    concurrency: int,
    timeout: float | tuple[float, float] = (10.0, 60.0),
    log: Any = None,
    select: Callable[[Any], Any] | None = None,
    headers: Mapping[str, str] | None = None,
    auth: aiohttp.BasicAuth | None = None,
    request_options: Mapping[str, Any] | None = None,
    stats: dict[str, Any] | None = None,
) -> Iterator[Row]:
    """The asyncio engine: ``concurrency`` calls in flight on one event loop, run in this thread
    while the consumer waits for the next row. ``headers``, ``auth`` and ``request_options`` come
    from the Airflow connection (``HttpAsyncHook.config()``). ``stats``, if given, receives the
    number of store operations made (``store_operations``) and of new slots taken by calls that
    missed theirs (``new_slots``)."""
    rows: dict[int, Row] = {}
    with _frozen_heap(), asyncio.Runner(loop_factory=_new_loop) as runner:
        loop = runner.get_loop()
        admissions = AdmissionQueues(lease_seconds(timeout), default_events(log, guard.listeners))

        async def engine() -> None:
            async with new_session(concurrency, timeout, headers=headers, auth=auth) as session:
                caller = AsyncCaller(session, admissions.get(guard), request_options=request_options)
                indices = iter(range(count))

                async def worker() -> None:
                    for index in indices:
                        call_guard = None
                        try:
                            kwargs = request(index)
                            call_guard = kwargs.pop("guard", None) or guard
                            cache_key = kwargs.pop("cache_key", None)
                            queue = admissions.get(call_guard)
                            reply = await caller.call(HttpRequest(**kwargs), cache_key, queue)
                            rows[index] = _row(index, reply, select)
                        except ApiOrchestrationError as exc:
                            rows[index] = _failed(index, exc, call_guard)

                workers = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, count))]
                try:
                    await asyncio.gather(*workers)
                finally:
                    for task in workers:
                        task.cancel()
                    await asyncio.gather(*workers, return_exceptions=True)
                    await admissions.close()

        task = loop.create_task(engine())
        try:
            for index in range(count):
                while index not in rows:
                    if task.done():
                        task.result()  # the engine's error
                        raise RuntimeError(f"bulk engine stopped without row {index}")
                    loop.run_until_complete(asyncio.wait([task], timeout=POLL_SECONDS))
                yield rows.pop(index)
            loop.run_until_complete(task)
        finally:
            if not task.done():
                task.cancel()
                loop.run_until_complete(asyncio.wait([task]))
            if stats is not None:
                stats.update(store_operations=admissions.operations, new_slots=admissions.new_slots)

"""Admission for the many calls of one event loop, in batches.

Calls waiting for admission queue up; one pump hands them to the store together with the verdicts
waiting to be recorded, as one :meth:`~api_orchestration.state.base.StateBackend.admit_many` (one
atomic operation, one round trip), in a thread of its own so that the event loop never blocks on
the store. The pump makes at most one operation every ``interval`` seconds (an idle queue's first
request goes at once), so under load the batches grow: at 2,000 calls/s, about 10 calls per
operation instead of one or two operations per call. Slots are still handed out first come,
first served, and the store's decisions are exactly those of the same admissions one by one.

A store operation decides one limiter and breaker key (``admit_many``), so calls under several keys
(bulk's per-item keys) are batched per key: :class:`AdmissionQueues` keeps one queue per key pair,
all sharing a small pool of store threads.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from api_orchestration.calls.events import BreakerTransition, Events, VerdictNotRecorded
from api_orchestration.calls.flow import Admitted, decision_instant
from api_orchestration.calls.guard import Guard
from api_orchestration.state.base import Batch, Verdict

MAX_BATCH = 256  # admissions per store operation
INTERVAL = 0.005  # at most one store operation per this many seconds, while busy
STORE_THREADS = 4  # store operations of different keys in flight at once (one per key at most)
Waiter = asyncio.Future[Admitted]


class AdmissionQueue:
    """Batches the admissions and verdicts of the calls made under one :class:`Guard` on one loop."""

    def __init__(
        self,
        guard: Guard,
        lease_seconds: float,
        events: Events,
        *,
        max_batch: int = MAX_BATCH,
        interval: float = INTERVAL,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self.guard, self.events, self.max_batch, self.interval = guard, events, max_batch, interval
        self.request = guard.admission_request(lease_seconds)
        self.operations = 0  # store operations made (admit_many calls)
        self.new_slots = 0  # slot-only admissions (late calls)
        self.round_trip = float("inf")  # the shortest operation seen, start to answer: its steady part
        self._own_executor = executor is None  # else shared with other keys' queues, shut down by its owner
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="api-orchestration-admission")
        self._waiting: deque[Waiter] = deque()
        self._slot_only: deque[Waiter] = deque()
        self._verdicts: list[Verdict] = []
        self._pump: asyncio.Task[None] | None = None
        self._last = float("-inf")  # when the last operation was sent (time.monotonic)

    async def admit(self, *, slot_only: bool = False) -> Admitted:
        """This call's admission (granted or not), decided with the calls queued alongside it."""
        waiter: Waiter = asyncio.get_running_loop().create_future()
        (self._slot_only if slot_only else self._waiting).append(waiter)
        self.new_slots += slot_only
        self._kick()
        return await waiter

    def record(self, verdict: Verdict) -> None:
        """Queue a finished call's verdict; it is recorded before any admission asked for later."""
        self._verdicts.append(verdict)
        self._kick()

    async def pause(self, seconds: float) -> float:
        """Pause the key for every caller (a 429's ``Retry-After``); see ``StateBackend.limiter_pause``."""
        return await self._in_thread(self.guard.backend.limiter_pause, self.guard.limit_key, seconds)

    async def close(self) -> None:
        """Wait for the pump, record the verdicts still queued (a failure is logged, not raised:
        the calls were made; their leases expire), and stop the store thread (if its own)."""
        if self._pump is not None:
            await asyncio.gather(self._pump, return_exceptions=True)
        verdicts, self._verdicts = self._verdicts, []
        try:
            if verdicts:
                self._recorded((await self._operation(0, verdicts, slot_only=False))[1])
        except Exception as exc:
            key = self.guard.breaker_key or self.guard.limit_key
            self.events.publish(VerdictNotRecorded(key, len(verdicts), getattr(exc, "cause_text", str(exc))))
        finally:
            if self._own_executor:
                self._executor.shutdown(wait=True)

    # -- the pump -------------------------------------------------------------------------------
    def _kick(self) -> None:
        if self._pump is None or self._pump.done():
            self._pump = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while self._waiting or self._verdicts or self._slot_only:
            pause = self._last + self.interval - time.monotonic()
            if pause > 0 and len(self._waiting) < self.max_batch:
                await asyncio.sleep(pause)  # busy: let the batch grow
            if self._slot_only and not await self._serve(self._slot_only, slot_only=True):
                return
            if (self._waiting or self._verdicts) and not await self._serve(self._waiting, slot_only=False):
                return

    async def _serve(self, queue: deque[Waiter], *, slot_only: bool) -> bool:
        """One store operation for the first ``max_batch`` callers of ``queue`` (and, unless
        ``slot_only``, the queued verdicts). False if the store failed."""
        waiting = []
        while queue and len(waiting) < self.max_batch:
            waiter = queue.popleft()
            if not waiter.done():  # a cancelled caller drops out
                waiting.append(waiter)
        verdicts, self._verdicts = ([], self._verdicts) if slot_only else (self._verdicts, [])
        self._last = time.monotonic()
        try:
            sent, batch = await self._operation(len(waiting), verdicts, slot_only=slot_only)
        except Exception as exc:  # the store failed: refuse these calls (fail closed)
            self._verdicts[:0] = verdicts  # not recorded: retried with the next batch, or by close()
            for waiter in waiting:
                if not waiter.done():
                    waiter.set_exception(exc)
            return False
        self.round_trip = min(self.round_trip, time.monotonic() - sent)
        self._recorded(batch)
        local, wall, mono = self.guard.backend.local_clock, time.time(), time.monotonic()
        for i, waiter in enumerate(waiting):
            if not waiter.done():
                admission = batch.granted[i] if i < len(batch.granted) else batch.refused
                if local:  # the store's decision instant is known exactly
                    admitted = Admitted(admission, decision_instant(admission, True, sent, wall, mono), 0.0)  # type: ignore[arg-type]
                else:  # no earlier than the operation's start, plus its steady round trip
                    admitted = Admitted(admission, sent, self.round_trip)  # type: ignore[arg-type]
                waiter.set_result(admitted)
        return True

    async def _operation(
        self, count: int, verdicts: list[Verdict], *, slot_only: bool
    ) -> tuple[float, Batch]:
        """When the store thread started the operation (``time.monotonic``: the store decides no
        earlier), and the batch."""
        request = self.request.slot_only() if slot_only else self.request
        self.operations += 1

        def timed() -> tuple[float, Batch]:
            started = time.monotonic()
            return started, self.guard.backend.admit_many(count, request, verdicts)

        return await self._in_thread(timed)

    async def _in_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(fn, *args))

    def _recorded(self, batch: Batch) -> None:
        for transition in batch.recorded:
            if transition.changed:
                self.events.publish(
                    BreakerTransition(self.guard.breaker_key, transition.before, transition.after)
                )


class AdmissionQueues:
    """One :class:`AdmissionQueue` per guard (limiter and breaker key pair) of one event loop, made
    on first use; the queues share ``STORE_THREADS`` store threads, and each makes at most one
    store operation at a time, so a single key behaves exactly as one queue on its own."""

    def __init__(self, lease_seconds: float, events: Events, **options: Any) -> None:
        self.lease_seconds, self.events, self.options = lease_seconds, events, options
        self._executor = ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="api-orchestration-admission")
        self._queues: dict[tuple[str, str], AdmissionQueue] = {}

    def get(self, guard: Guard) -> AdmissionQueue:
        """The queue of ``guard``'s keys (guards of the same keys share one)."""
        pair = (guard.limit_key, guard.breaker_key)
        queue = self._queues.get(pair)
        if queue is None:
            queue = self._queues[pair] = AdmissionQueue(
                guard, self.lease_seconds, self.events, executor=self._executor, **self.options
            )
        return queue

    @property
    def operations(self) -> int:
        """Store operations made by every queue."""
        return sum(q.operations for q in self._queues.values())

    @property
    def new_slots(self) -> int:
        return sum(q.new_slots for q in self._queues.values())

    async def close(self) -> None:
        """Close every queue (see :meth:`AdmissionQueue.close`), then stop the store threads."""
        try:
            await asyncio.gather(*(q.close() for q in self._queues.values()))
        finally:
            self._executor.shutdown(wait=True)

"""Large deterministic record sets whose ``updated_at`` moves as server time passes, computed lazily.

A :class:`Dataset` holds ``count`` records (ids ``1..count``). Record ``i`` was created at
``origin + (i - 1) * step`` (all before the server started). From the server's start on, one record
is updated every ``tick`` seconds, in a fixed shuffled order (tick ``k`` updates record
``(stride * k + offset) % count + 1``, a permutation), so every record is updated once per
``count`` ticks and ``updated_at`` is either a tick time or the creation time. Nothing is stored
per record: a record and its position in ``updated_at`` order are arithmetic, so a server with
100,000 records starts in microseconds and serves any page in about the time of its rows.

``growing=True`` instead adds one new record per tick (a stream of creations, as a payments API
has) and never updates old ones. The clock is the server's, unless frozen with
``POST /admin/datasets {"now": ...}`` (tests freeze it to compare two syncs exactly).
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

_SHUFFLE_SEED = 0x9E3779B1


@dataclass
class Dataset:
    """``count`` records created ``step`` apart before ``epoch``; one update (or creation) per ``tick``."""

    name: str
    count: int
    epoch: datetime  # the server's start, whole seconds: the first tick
    step: timedelta
    tick: timedelta = timedelta(seconds=1)
    growing: bool = False
    origin: datetime = field(init=False)
    _stride: int = field(init=False, repr=False)
    _inverse: int = field(init=False, repr=False)
    _offset: int = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)
    _applied: int = field(init=False, repr=False, default=-1)
    _updated: list[int] = field(init=False, repr=False, default_factory=list)

    def __post_init__(self) -> None:
        # records end a whole hour before the epoch's hour, so hourly windows hold whole steps
        last_hour = self.epoch.replace(minute=0, second=0, microsecond=0)
        self.origin = last_hour - self.step * self.count
        stride = (_SHUFFLE_SEED + len(self.name) * 7919) % self.count or 1
        while math.gcd(stride, self.count) != 1:
            stride += 1
        self._stride, self._inverse = stride, pow(stride, -1, self.count)
        self._offset = sum(map(ord, self.name)) % self.count

    # -- time -------------------------------------------------------------------------------------
    def ticks_at(self, now: datetime) -> int:
        """The number of the last tick at or before ``now`` (-1 before the first)."""
        return math.floor((now - self.epoch) / self.tick)

    def tick_time(self, k: int) -> datetime:
        return self.epoch + self.tick * k

    def created_at(self, record_id: int) -> datetime:
        if record_id > self.count:  # a record created by tick record_id - count - 1
            return self.tick_time(record_id - self.count - 1)
        return self.origin + self.step * (record_id - 1)

    def size(self, now: datetime) -> int:
        """How many records exist at ``now``."""
        return self.count + max(0, self.ticks_at(now) + 1) if self.growing else self.count

    # -- updates (non-growing datasets) -----------------------------------------------------------
    def updated_by(self, k: int) -> int:
        return (self._stride * k + self._offset) % self.count + 1

    def last_update(self, record_id: int, now: datetime) -> int | None:
        """The last tick at or before ``now`` that updated ``record_id``, or None."""
        if self.growing:
            return None
        latest = self.ticks_at(now)
        first = (self._inverse * (record_id - 1 - self._offset)) % self.count
        if first > latest:
            return None
        return first + (latest - first) // self.count * self.count

    def updated_at(self, record_id: int, now: datetime) -> datetime:
        k = self.last_update(record_id, now)
        return self.created_at(record_id) if k is None else self.tick_time(k)

    def revision(self, record_id: int, now: datetime) -> int:
        """How many times the record was updated by ``now``."""
        k = self.last_update(record_id, now)
        return 0 if k is None else k // self.count + 1

    def _updated_ids(self, latest: int) -> list[int]:
        """Sorted ids of the records updated by tick ``latest`` (only while some are not)."""
        with self._lock:
            if latest < self._applied:
                self._applied, self._updated = -1, []
            for k in range(self._applied + 1, latest + 1):
                bisect.insort(self._updated, self.updated_by(k))
            self._applied = max(self._applied, latest)
            return self._updated

    # -- ordered views ----------------------------------------------------------------------------
    def by_updated(self, now: datetime, since: datetime | None, before: datetime | None) -> UpdatedView:
        """The records with ``since <= updated_at < before`` in ``(updated_at, id)`` order, at ``now``."""
        latest = self.ticks_at(now)
        # creation part: records not updated yet, in id (= creation) order
        lo = 1 if since is None else max(1, math.ceil((since - self.origin) / self.step) + 1)
        hi = (
            self.count + 1
            if before is None
            else min(self.count + 1, math.ceil((before - self.origin) / self.step) + 1)
        )
        excluded: list[int] = []
        if latest >= self.count - 1:
            lo = hi = 1  # every record was updated at least once
        elif latest >= 0:
            excluded = self._updated_ids(latest)
        # update part: the last ``count`` ticks, one distinct record each, in tick order
        first_tick = max(0, latest - self.count + 1)
        k_lo = first_tick if since is None else max(first_tick, math.ceil((since - self.epoch) / self.tick))
        k_hi = latest + 1
        if before is not None:
            k_hi = min(k_hi, math.ceil((before - self.epoch) / self.tick))
        return UpdatedView(self, max(lo, 1), max(hi, lo, 1), excluded, k_lo, max(k_hi, k_lo))


@dataclass(frozen=True)
class UpdatedView:
    """A window of a dataset in ``updated_at`` order: ids ``lo..hi-1`` minus ``excluded``, then ticks."""

    dataset: Dataset
    lo: int
    hi: int
    excluded: list[int]
    k_lo: int
    k_hi: int

    def _excluded_below(self, record_id: int) -> int:
        return bisect.bisect_left(self.excluded, record_id) - bisect.bisect_left(self.excluded, self.lo)

    @property
    def created_part(self) -> int:
        return self.hi - self.lo - self._excluded_below(self.hi)

    def __len__(self) -> int:
        return self.created_part + self.k_hi - self.k_lo

    def ids(self, offset: int, limit: int) -> Iterator[int]:
        """The ids at positions ``offset .. offset + limit - 1``."""
        created = self.created_part
        end = min(offset + limit, len(self))
        position = offset
        if position < created:
            record_id = self._nth_created(position)
            while position < min(end, created):
                if not self._is_excluded(record_id):
                    yield record_id
                    position += 1
                record_id += 1
        for k in range(self.k_lo + position - created, self.k_lo + end - created):
            yield self.dataset.updated_by(k)

    def _is_excluded(self, record_id: int) -> bool:
        i = bisect.bisect_left(self.excluded, record_id)
        return i < len(self.excluded) and self.excluded[i] == record_id

    def _nth_created(self, n: int) -> int:
        """The smallest id whose kept records before it number ``n`` (binary search)."""
        low, high = self.lo, self.hi
        while low < high:
            mid = (low + high) // 2
            if mid - self.lo - self._excluded_below(mid) <= n:
                low = mid + 1
            else:
                high = mid
        record_id = low - 1
        while self._is_excluded(record_id):
            record_id += 1
        return record_id


def now_utc() -> datetime:
    return datetime.now(UTC)

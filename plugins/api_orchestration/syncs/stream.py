"""A stream: what one sync copies (a collection with a primary key and a cursor) and its window.

Modes (anchored on Airbyte's incremental ``DatetimeBasedCursor`` and Singer state bookmarks):

* ``interval``: each run fetches its data interval ``[data_interval_start, data_interval_end)``; a
  backfill or a cleared run re-fetches exactly that interval.
* ``cursor``: each run fetches from the stream's high-water mark (minus ``lookback``) up to the time
  the run started; the mark is committed in the sink only after the sink's write succeeded.

The cursor field is a timestamp (ISO-8601 text or epoch seconds in the record) or an increasing
integer. Records whose cursor falls outside the window are dropped client-side (APIs such as
GitHub's have a ``since`` but no ``until``), and ``ordered=True`` stops paging at the first page
that ends past the window.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from api_orchestration.errors import ConfigurationError


class SyncMode(StrEnum):
    INTERVAL = "interval"
    CURSOR = "cursor"


class CursorKind(StrEnum):
    TIMESTAMP = "timestamp"
    INTEGER = "integer"


class ParamFormat(StrEnum):
    """How a window bound is written into a query parameter."""

    ISO = "iso"  # 2026-01-01T00:00:00+00:00
    ISO_Z = "iso_z"  # 2026-01-01T00:00:00Z (GitHub)
    EPOCH = "epoch"  # 1767225600 (Stripe's created[gte])


CursorValue = dt.datetime | int


@dataclass(frozen=True)
class Window:
    """``start <= cursor < end``; a None bound is open."""

    start: CursorValue | None
    end: CursorValue | None

    def as_dict(self) -> dict[str, Any]:
        return {"start": _dump(self.start), "end": _dump(self.end)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Window:
        return cls(_load(data.get("start")), _load(data.get("end")))


def _dump(value: CursorValue | None) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime) else value


def _load(value: Any) -> CursorValue | None:
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else value


@dataclass(frozen=True)
class Stream:
    """One collection to sync.

    :param name: the table (SQL sinks) or folder (file sink); a plain identifier.
    :param primary_key: the field(s) that identify a record; upserts key on them.
    :param cursor_field: the field that moves when a record changes (``updated_at``) or a new
        one is created (an increasing ``id``, Stripe's ``created``); None: full refresh each run.
    :param cursor_kind: ``timestamp`` or ``integer``.
    :param mode: ``interval`` (the run's data interval) or ``cursor`` (a high-water mark).
    :param start: the first window's start in cursor mode (ISO text, datetime or integer).
    :param lookback: re-read this much before the high-water mark (records that moved between
        pages while the last run paged); a timedelta, or an integer for integer cursors.
    :param since_param / until_param: query parameters that receive the window's bounds.
    :param param_format: how timestamps are written into them (``iso``, ``iso_z``, ``epoch``).
    :param ordered: the API returns records in ascending cursor order: stop past the window's end.
    :param partition: a label for one partition of the stream (e.g. a repository); state is per
        stream and partition.
    """

    name: str
    primary_key: tuple[str, ...]
    cursor_field: str | None = None
    cursor_kind: CursorKind = CursorKind.TIMESTAMP
    mode: SyncMode = SyncMode.INTERVAL
    start: Any = None
    lookback: dt.timedelta | int = dt.timedelta(0)
    since_param: str | None = None
    until_param: str | None = None
    param_format: ParamFormat = ParamFormat.ISO
    ordered: bool = False
    partition: str = ""
    owner: str = field(default="Stream", compare=False)

    def __post_init__(self) -> None:
        o = f"{self.owner} {self.name!r}" if self.owner == "Stream" else self.owner
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ConfigurationError(o, "name", self.name, "must be a plain identifier (letters, digits, _)")
        key = (self.primary_key,) if isinstance(self.primary_key, str) else tuple(self.primary_key or ())
        if not key or not all(isinstance(k, str) and k.isidentifier() for k in key):
            raise ConfigurationError(o, "primary_key", self.primary_key, "must name one or more fields")
        object.__setattr__(self, "primary_key", key)
        for name, kind in (("mode", SyncMode), ("cursor_kind", CursorKind), ("param_format", ParamFormat)):
            try:
                object.__setattr__(self, name, kind(getattr(self, name)))
            except ValueError:
                choices = ", ".join(kind)
                raise ConfigurationError(o, name, getattr(self, name), f"must be one of {choices}") from None
        if self.cursor_field is not None and not (
            isinstance(self.cursor_field, str) and self.cursor_field.isidentifier()
        ):
            raise ConfigurationError(o, "cursor_field", self.cursor_field, "must be a field name")
        if self.mode is SyncMode.CURSOR and self.cursor_field is None:
            raise ConfigurationError(o, "cursor_field", None, "is required in cursor mode")
        integer = self.cursor_kind is CursorKind.INTEGER
        if integer and not (isinstance(self.lookback, int) and not isinstance(self.lookback, bool)):
            if self.lookback == dt.timedelta(0):
                object.__setattr__(self, "lookback", 0)
            else:
                raise ConfigurationError(
                    o, "lookback", self.lookback, "must be an integer for an integer cursor"
                )
        if not integer and not isinstance(self.lookback, dt.timedelta):
            raise ConfigurationError(
                o, "lookback", self.lookback, "must be a timedelta for a timestamp cursor"
            )
        if self.start is not None:
            try:
                object.__setattr__(self, "start", self.parse(self.start))
            except (TypeError, ValueError):
                raise ConfigurationError(
                    o, "start", self.start, f"must be a {self.cursor_kind.value} value"
                ) from None
        if not isinstance(self.partition, str):
            raise ConfigurationError(o, "partition", self.partition, "must be a string label")

    # -- cursor values ---------------------------------------------------------------------------
    def parse(self, value: Any) -> CursorValue:
        """A cursor value from a record or a setting: datetime (UTC) or int. Raises ValueError."""
        if self.cursor_kind is CursorKind.INTEGER:
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if isinstance(value, dt.datetime):
            moment = value
        elif isinstance(value, int | float) and not isinstance(value, bool):
            return dt.datetime.fromtimestamp(value, dt.UTC)
        else:
            moment = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        if moment.tzinfo is None:
            raise ValueError(f"timestamp {value!r} has no UTC offset")
        return moment.astimezone(dt.UTC)

    def cursor_of(self, record: Any) -> CursorValue | None:
        if self.cursor_field is None or not isinstance(record, dict):
            return None
        raw = record.get(self.cursor_field)
        if raw is None:
            return None
        try:
            return self.parse(raw)
        except (TypeError, ValueError):
            return None

    def format_param(self, value: CursorValue) -> Any:
        if isinstance(value, int):
            return value
        if self.param_format is ParamFormat.EPOCH:
            return int(value.timestamp())
        if self.param_format is ParamFormat.ISO_Z:
            return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return value.isoformat()

    def window_params(self, window: Window) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.since_param and window.start is not None:
            params[self.since_param] = self.format_param(window.start)
        if self.until_param and window.end is not None:
            params[self.until_param] = self.format_param(window.end)
        return params

    def interval_window(self, start: dt.datetime | None, end: dt.datetime | None) -> Window:
        if self.cursor_kind is CursorKind.INTEGER:
            raise ConfigurationError(
                f"stream {self.name!r}",
                "mode",
                "interval",
                "needs a timestamp cursor; use mode 'cursor' for an integer",
            )
        return Window(start, end)

    def cursor_window(self, mark: CursorValue | None, now: dt.datetime) -> Window:
        start = self.start
        if mark is not None:  # re-read the lookback before the mark (records that moved while paging)
            start = mark - self.lookback if self.lookback else mark  # type: ignore[operator]
        end = now if self.cursor_kind is CursorKind.TIMESTAMP else None
        return Window(start, end)


def window_slot(window: Window) -> str:
    """``<start>_<end>`` in compact UTC: names a window's checkpoint row or folder."""
    return f"{_slug(window.start)}_{_slug(window.end)}"


def _slug(value: CursorValue | None) -> str:
    if value is None:
        return "open"
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return str(value)

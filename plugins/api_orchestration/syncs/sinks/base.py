"""The sink contract and the column schema shared by the SQL sinks.

A sink writes one page's records *and* the sync's checkpoint atomically (:meth:`Sink.write_page`),
so a task killed at any instant resumes at the page that was not committed: no duplicates (rows are
upserted on the primary key anyway) and no gaps. In cursor mode the page that ends the run also
commits the stream's high-water mark, in the same transaction.

Columns are declared (``{"id": "integer", "title": "text"}``) or inferred from the records: a new
field adds a column of its inferred type; a value that does not fit its column's type is stored as
NULL there, and the whole record is kept as JSON in ``_raw`` (``keep_raw``), so nothing fails and
nothing is lost. A partitioned stream's rows carry its label in ``_partition``, which a primary key
may name (``("_partition", "number")``: ids that are unique only within their parent).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from api_orchestration.errors import ConfigurationError
from api_orchestration.syncs.checkpoint import Checkpoint
from api_orchestration.syncs.stream import Stream

RAW_COLUMN = "_raw"
PARTITION_COLUMN = "_partition"  # a partitioned stream's label on each of its rows (tables)


class ColumnType(StrEnum):
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    TEXT = "text"
    TIMESTAMP = "timestamp"
    JSON = "json"


def infer_type(value: Any) -> ColumnType | None:
    """The column type for a JSON value (None for null: decided by a later value)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return ColumnType.BOOLEAN
    if isinstance(value, int):
        return ColumnType.INTEGER
    if isinstance(value, float):
        return ColumnType.NUMBER
    if isinstance(value, dict | list):
        return ColumnType.JSON
    return ColumnType.TEXT


def coerce(value: Any, kind: ColumnType) -> Any:
    """``value`` as a ``kind`` column holds it, or None when it does not fit (``_raw`` keeps it)."""
    if value is None:
        return None
    if kind is ColumnType.TEXT:
        return (
            value
            if isinstance(value, str)
            else json.dumps(value)
            if isinstance(value, dict | list)
            else str(value)
        )
    if kind is ColumnType.INTEGER:
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if kind is ColumnType.NUMBER:
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    if kind is ColumnType.BOOLEAN:
        return value if isinstance(value, bool) else None
    if kind is ColumnType.JSON:
        return json.dumps(value, separators=(",", ":"))
    try:  # TIMESTAMP: ISO text with an offset, or epoch seconds
        if isinstance(value, int | float) and not isinstance(value, bool):
            return dt.datetime.fromtimestamp(value, dt.UTC).isoformat()
        moment = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        return moment.isoformat() if moment.tzinfo is not None else None
    except (TypeError, ValueError, OverflowError):
        return None


def _text(value: Any) -> Any:
    if value is None or value.__class__ is str:
        return value
    return coerce(value, ColumnType.TEXT)


def _integer(value: Any) -> Any:
    return value if value.__class__ is int else None if value is None else coerce(value, ColumnType.INTEGER)


def _json_text(value: Any) -> Any:
    return None if value is None else json.dumps(value, separators=(",", ":"))


_FAST = {ColumnType.TEXT: _text, ColumnType.INTEGER: _integer, ColumnType.JSON: _json_text}


def converter(kind: ColumnType) -> Any:
    """``coerce`` for one column type, with a fast path for the common types."""
    return _FAST.get(kind) or (lambda value: coerce(value, kind))


_NOT_WORD = re.compile(r"\W+")


def column_name(field: str) -> str:
    """A safe SQL column name for a record field (``+1`` -> ``_1``, ``Created At`` -> ``created_at``)."""
    if field == PARTITION_COLUMN:
        return field
    name = _NOT_WORD.sub("_", field).strip("_").lower() or "field"
    return f"_{name}" if name[0].isdigit() else name


def declared_columns(owner: str, columns: Mapping[str, Any] | None) -> dict[str, ColumnType]:
    """``{field: ColumnType}`` from a declared schema; a clear error naming a bad entry."""
    result: dict[str, ColumnType] = {}
    for field_name, kind in (columns or {}).items():
        if not isinstance(field_name, str) or not field_name:
            raise ConfigurationError(owner, "columns", field_name, "keys must be field names")
        try:
            result[field_name] = ColumnType(kind)
        except ValueError:
            choices = ", ".join(ColumnType)
            raise ConfigurationError(
                owner, f"columns[{field_name!r}]", kind, f"must be one of {choices}"
            ) from None
    return result


class Sink(ABC):
    """Where a sync writes. One instance serves one stream partition of one task."""

    uri: str

    @abstractmethod
    def open(self, stream: Stream) -> None:
        """Create what the stream needs (table, state); idempotent."""

    @abstractmethod
    def checkpoint(self, stream: Stream, slot: str) -> Checkpoint | None:
        """The last committed checkpoint of the stream partition's ``slot`` (a window, or ``""``)."""

    @abstractmethod
    def high_water_mark(self, stream: Stream) -> Any:
        """The committed cursor mark (JSON value) of the stream partition, or None."""

    @abstractmethod
    def restart(self, stream: Stream, slot: str) -> None:
        """Forget earlier output of ``slot`` before it is fetched again from the first page (files)."""

    @abstractmethod
    def write_page(
        self, stream: Stream, slot: str, records: list[dict[str, Any]], checkpoint: Checkpoint
    ) -> int:
        """Write ``records`` and ``checkpoint`` in one atomic step; returns the bytes written."""

    @abstractmethod
    def close(self) -> None: ...

    def parts(self, stream: Stream, slot: str) -> list[str]:
        """The URIs of the objects written (file sinks); empty for tables."""
        return []

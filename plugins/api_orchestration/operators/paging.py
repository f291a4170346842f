"""Pagination on a task's call: the single-call operator, a workflow step, a bulk task's item list.

Every page goes through the sync engine (:func:`~api_orchestration.syncs.engine.run_sync`): one
guarded call per page (the shared limiter and breaker, its own retries and ``Retry-After``), its
records written as one JSON-lines part through ``ObjectStoragePath`` together with the position,
so an Airflow retry, a kill -9 or a deferral resumes at the page that was not written: no duplicate,
no gap, one page in memory. The files live under the bulk results location
(``[api_orchestration] results_url``, else ``file://`` under ``AIRFLOW_HOME``)::

    <results>/pages/<dag_id>/<run_id>/<task_id>[/<map_index>]/window=open_open/part-00001.jsonl.gz

one folder per task instance (every try of it shares the folder: that is how a retry resumes). A
finished folder fetched again (a cleared task) starts from the first page.

What XCom gets (``Pagination.output``): ``records`` (default) the records of every page, as
providers-http's ``pagination_function`` users expect, refused past ``max_xcom_bytes`` of page
bodies with an error naming the fixes; ``manifest`` the files' URIs and counts (any size), read by
a later task with :func:`iter_records`.
"""

from __future__ import annotations

import bisect
import gzip
import json
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from api_orchestration.calls.pagination import PageOutput, Pagination
from api_orchestration.errors import ConfigurationError
from api_orchestration.syncs.checkpoint import Checkpoint, Manifest
from api_orchestration.syncs.engine import Source, run_sync
from api_orchestration.syncs.progress import Progress
from api_orchestration.syncs.sinks.files import FileSink
from api_orchestration.syncs.stream import Stream

MANIFEST_KEYS = ("uri", "parts", "pages", "rows", "bytes", "checksum", "stop", "resumed_at_page")


@dataclass(frozen=True)
class PagedList:
    """A paginated GET whose records are a bulk task's items (``BulkHttpOperator(items=PagedList(...))``).

    ``endpoint``, ``query`` and ``headers`` are templates rendered with the task context (not per
    item); the call uses the bulk task's connection, limiter and breaker."""

    endpoint: str
    pagination: Pagination
    query: dict[str, Any] | None = None
    headers: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.pagination, Pagination):
            raise ConfigurationError(
                "PagedList", "pagination", self.pagination, "must be a Pagination(style=...)"
            )
        if not isinstance(self.endpoint, str) or not self.endpoint:
            raise ConfigurationError("PagedList", "endpoint", self.endpoint, "must be a path such as /users")


def task_folder(ti: Any) -> str:
    """``<dag_id>/<run_id>/<task_id>[/<map_index>]``: the checkpoint's key, one per task instance."""
    folder = f"{ti.dag_id}/{str(ti.run_id).replace('/', '_')}/{ti.task_id}"
    map_index = getattr(ti, "map_index", -1)
    return folder if map_index is None or map_index < 0 else f"{folder}/{map_index}"


class _PageFiles(FileSink):
    """The file sink, refusing to go on once a ``records`` output has outgrown XCom."""

    def __init__(self, base: str, limit: int | None, too_large: str) -> None:
        super().__init__(base)
        self.limit, self.too_large = limit, too_large

    def write_page(
        self, stream: Stream, slot: str, records: list[dict[str, Any]], checkpoint: Checkpoint
    ) -> int:
        size = super().write_page(stream, slot, records, checkpoint)
        if self.limit is not None and checkpoint.bytes > self.limit:
            raise AirflowFailException(
                self.too_large.format(pages=checkpoint.pages, bytes=checkpoint.bytes, uri=self.uri)
            )
        return size


def fetch_pages(
    caller: Any,
    url: str,
    pagination: Pagination,
    *,
    ti: Any,
    owner: str,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    progress: Progress | None = None,
    results_url: str | None = None,
    kind: str = "pages",
    limit: bool = True,
) -> dict[str, Any]:
    """Page ``url`` through ``caller`` (a ``ResilientCaller``) into this task instance's folder,
    resuming its checkpoint; returns the manifest (:data:`MANIFEST_KEYS`). With ``limit`` and a
    ``records`` output, fails once the page bodies pass ``max_xcom_bytes``. Raises what the calls
    raise (``HttpCallError``, ``DeferralNeeded`` ...): the position is kept for the next try."""
    from api_orchestration.operators.bulk import results_base

    records_out = limit and pagination.output is PageOutput.RECORDS
    too_large = (
        f"{owner}: the pages add up to more than {pagination.max_xcom_bytes:,} bytes ({{pages}} pages, {{bytes:,}} "
        "bytes so far), too much for XCom. Set the pagination's output='manifest' (spec: paginate: {{output: "
        "manifest}}) so XCom carries the files' URIs and a later task reads them with iter_records(); raise "
        "max_xcom_bytes if the records really must travel in XCom; or, for a recurring copy into a table or "
        "object storage, use a sync step (ApiSyncOperator). The pages written so far are kept under {uri}."
    )
    sink = _PageFiles(
        results_base(results_url), pagination.max_xcom_bytes if records_out else None, too_large
    )
    stream = Stream(kind, primary_key="_", partition=task_folder(ti))  # files keep every record: no key
    try:
        manifest: Manifest = run_sync(
            caller,
            Source(url, pagination, params, headers),
            stream,
            sink,
            run_id=str(ti.run_id),
            progress=progress,
        )
    finally:
        sink.close()
    if progress is not None:
        progress.log.info("%s; stopped on %s", progress.line(final=True), manifest.stop or "the last page")
    data = manifest.as_dict()
    return {key: data[key] for key in MANIFEST_KEYS}


def _part(uri: str) -> list[Any]:
    from airflow.sdk import ObjectStoragePath

    with ObjectStoragePath(uri).open("rb") as f:
        data = f.read()
    if str(uri).endswith(".gz"):
        data = gzip.decompress(data)
    return [json.loads(line) for line in data.splitlines() if line]


def iter_records(manifest: Mapping[str, Any] | list[str]) -> Iterator[Any]:
    """The records of a paginated call's manifest (or a list of part URIs), one part in memory at a time."""
    parts = manifest if isinstance(manifest, list) else manifest.get("parts") or []
    for uri in parts:
        yield from _part(uri)


class PagedItems(Sequence[Any]):
    """The records of a manifest as a read-only sequence, a few parts (pages) in memory at a time:
    a bulk task's items, however many. The engines ask for items in about increasing order, so a
    small cache of parts serves them; a part evicted and asked again is read again (thread-safe)."""

    def __init__(self, manifest: Mapping[str, Any], cached_parts: int = 8) -> None:
        self.parts: list[str] = list(manifest.get("parts") or [])
        self.starts: list[int] = []
        total = 0
        for uri in self.parts:  # counted once, streamed: the items' positions, not the items
            self.starts.append(total)
            total += len(_part(uri))
        self.total, self.cached_parts = total, cached_parts
        self._cache: OrderedDict[int, list[Any]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, index: Any) -> Any:
        if not isinstance(index, int):
            raise TypeError("PagedItems takes an integer index")
        if index < 0:
            index += self.total
        if not 0 <= index < self.total:
            raise IndexError(index)
        i = bisect.bisect_right(self.starts, index) - 1
        with self._lock:
            records = self._cache.get(i)
            if records is None:
                records = self._cache[i] = _part(self.parts[i])
                while len(self._cache) > self.cached_parts:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(i)
        return records[index - self.starts[i]]


def xcom_value(manifest: dict[str, Any], pagination: Pagination) -> Any:
    """What the task returns: the records (a list) or the manifest."""
    if pagination.output is PageOutput.MANIFEST:
        return manifest
    return list(iter_records(manifest))

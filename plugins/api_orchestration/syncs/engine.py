"""One sync of one stream partition: pages from the API into a sink, resumable at any page.

:func:`run_sync` decides the window (the run's interval, or the committed high-water mark), resumes
a checkpoint left by a failed try of the same run, sends every page as one guarded call, drops the
records outside the window, and hands each page and the next position to the sink in one atomic
write. Memory holds one page.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

from api_orchestration.calls.pagination import Page, PageRequest, Pagination, StopReason, iterate_pages
from api_orchestration.syncs.checkpoint import Checkpoint, Manifest, RunStatus
from api_orchestration.syncs.progress import Progress
from api_orchestration.syncs.sinks.base import Sink
from api_orchestration.syncs.stream import CursorValue, Stream, SyncMode, Window, window_slot


@dataclass(frozen=True)
class Source:
    """Where the pages come from: a URL, fixed query parameters and headers, and how it pages."""

    url: str
    pagination: Pagination
    params: dict[str, Any] | None = None
    headers: dict[str, str] | None = None


def plan(
    stream: Stream,
    sink: Sink,
    run_id: str,
    interval: tuple[dt.datetime | None, dt.datetime | None] | None,
    now: dt.datetime,
) -> tuple[Window, str, Checkpoint | None]:
    """The window of this run, its state slot, and the checkpoint to resume (None: the first page).

    Interval mode keeps one checkpoint per window (concurrent backfill runs never share one) and
    resumes an unfinished one whichever run left it; cursor mode keeps one per partition and resumes
    only the same run (a later run starts again from the committed mark).
    """
    if stream.mode is SyncMode.INTERVAL:
        window = stream.interval_window(*(interval or (None, None)))
        slot = window_slot(window)
        previous = sink.checkpoint(stream, slot)
        if previous is not None and previous.status is RunStatus.RUNNING:
            return window, slot, previous
        return window, slot, None
    previous = sink.checkpoint(stream, "")
    if previous is not None and previous.status is RunStatus.RUNNING and previous.run_id == run_id:
        return Window.from_dict(previous.window), "", previous
    mark = sink.high_water_mark(stream)
    return stream.cursor_window(None if mark is None else stream.parse(mark), now), "", None


def run_sync(
    caller: Any,
    source: Source,
    stream: Stream,
    sink: Sink,
    *,
    run_id: str,
    interval: tuple[dt.datetime | None, dt.datetime | None] | None = None,
    progress: Progress | None = None,
    now: dt.datetime | None = None,
) -> Manifest:
    """Sync ``stream`` from ``source`` into ``sink``; returns the manifest for XCom."""
    now = now or dt.datetime.now(dt.UTC)
    sink.open(stream)
    window, slot, resumed = plan(stream, sink, run_id, interval, now)
    if resumed is not None and resumed.next_request is not None:
        checkpoint, request = resumed, PageRequest.from_dict(resumed.next_request)
    else:
        params = {**(source.params or {}), **stream.window_params(window)}
        request = source.pagination.first_request(source.url, params)
        checkpoint = Checkpoint.start(run_id, window, request)
        sink.restart(stream, slot)
    resumed_at = checkpoint.pages
    if progress is not None:
        progress.resumed_at = resumed_at
    mark = _parse_mark(stream, checkpoint.mark)
    stop: StopReason | None = None
    for _sent, page, following in iterate_pages(caller, source.pagination, request, headers=source.headers):
        kept, page_mark, past_end = _in_window(stream, window, page)
        if page_mark is not None and (mark is None or page_mark > mark):  # type: ignore[operator]
            mark = page_mark
        if past_end and isinstance(following, PageRequest):
            following = StopReason.PAST_WINDOW
        digest = hashlib.sha256(page.content).hexdigest()
        nxt = following if isinstance(following, PageRequest) else None
        checkpoint = checkpoint.after_page(nxt, len(kept), len(page.content), _dump_mark(mark), digest)
        sink.write_page(stream, slot, kept, checkpoint)
        if progress is not None:
            progress.page(len(kept), _total(source.pagination, page))
        if not isinstance(following, PageRequest):
            stop = following
            break
    return Manifest(
        stream=stream.name,
        partition=stream.partition,
        uri=_uri(sink, stream),
        window=checkpoint.window,
        pages=checkpoint.pages,
        rows=checkpoint.rows,
        bytes=checkpoint.bytes,
        checksum=checkpoint.checksum,
        cursor=checkpoint.mark,
        resumed_at_page=resumed_at,
        stop=stop.value if stop else "",
        parts=sink.parts(stream, slot),
    )


def _uri(sink: Sink, stream: Stream) -> str:
    if sink.uri.startswith(("postgres://", "sqlite://")):
        return f"{sink.uri}#{stream.name}" if sink.uri.startswith("sqlite") else f"{sink.uri}{stream.name}"
    return f"{sink.uri.rstrip('/')}/{stream.name}" + (f"/{stream.partition}" if stream.partition else "")


def _in_window(
    stream: Stream, window: Window, page: Page
) -> tuple[list[dict[str, Any]], CursorValue | None, bool]:
    """The page's records inside the window, their highest cursor, and whether the page passed the end."""
    if stream.cursor_field is None:
        return page.records, None, False
    kept: list[dict[str, Any]] = []
    top: CursorValue | None = None
    past_end = False
    for record in page.records:
        value = stream.cursor_of(record)
        if value is not None:
            if window.start is not None and value < window.start:  # type: ignore[operator]
                continue
            if window.end is not None and value >= window.end:  # type: ignore[operator]
                past_end = True
                continue
            if top is None or value > top:  # type: ignore[operator]
                top = value
        kept.append(record)
    return kept, top, past_end and stream.ordered


def _total(pagination: Pagination, page: Page) -> int | None:
    """The collection's size when the API says it (``total_path``): the progress line's ETA."""
    total = pagination.total_of(page.body)
    return total if isinstance(total, int) else None


def _parse_mark(stream: Stream, value: Any) -> CursorValue | None:
    return None if value is None else stream.parse(value)


def _dump_mark(value: CursorValue | None) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime) else value

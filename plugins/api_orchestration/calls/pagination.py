"""Pagination declared on a call: pure strategies that say which request comes after a page.

A :class:`Pagination` names a style and where things are; :func:`next_request` takes the request
that was sent and the :class:`Page` it got and returns the next :class:`PageRequest`, or None when
a stop condition holds. No I/O here: :func:`iterate_pages` sends each page as one
``ResilientCaller.call`` (so every page has the shared limiter and breaker, its own retries and
``Retry-After``), and a sync checkpoints the :class:`PageRequest` it is about to send.

Styles (anchored on Airbyte's paginators and the APIs in REAL_APIS.md):

* ``cursor``: a cursor in the body (``cursor_path``, JMESPath, e.g. ``data[-1].id`` for Stripe's
  ``starting_after`` or ``next_cursor``) sent back as the query parameter ``cursor_param``;
* ``offset``: ``offset_param`` advances by the records received (``limit`` = ``page_size``);
* ``page_number``: ``page_param`` counts up from ``first_page``;
* ``link_header``: the RFC 8288 ``Link: <url>; rel="next"`` (GitHub);
* ``next_url``: a full next URL in the body (``next_url_path``).

Stop conditions, checked after every page: an empty page (``stop_on_empty``), a has-more flag that
is false (``has_more_path``), a total reached (``total_path``: offset and page number), ``max_pages``,
and each style's own end (no cursor, no next link, no next URL).

``output`` and ``max_xcom_bytes`` say what a paginated call of a task (not a sync) returns: the
records of every page (``records``, the default; up to ``max_xcom_bytes`` of page bodies) or a
manifest of the JSON-lines files that hold them (``manifest``; any size).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urljoin

import jmespath
from jmespath.exceptions import JMESPathError

from api_orchestration.errors import ConfigurationError


class PageStyle(StrEnum):
    CURSOR = "cursor"
    OFFSET = "offset"
    PAGE_NUMBER = "page_number"
    LINK_HEADER = "link_header"
    NEXT_URL = "next_url"


class PageOutput(StrEnum):
    """What a paginated task call returns to XCom."""

    RECORDS = "records"  # the records of every page, one list (small collections)
    MANIFEST = "manifest"  # the files' URIs and counts; the records stay in object storage


XCOM_MAX_BYTES = 1_048_576  # page bodies a ``records`` output may add up to (XCom is for small data)


class StopReason(StrEnum):
    EMPTY_PAGE = "empty page"
    NO_MORE = "has-more flag false"
    TOTAL_REACHED = "total reached"
    MAX_PAGES = "max_pages reached"
    NO_NEXT = "no next page"
    PAST_WINDOW = "records past the window end"


@dataclass(frozen=True)
class PageRequest:
    """One page's request: a URL and its query parameters. JSON-able (checkpointed)."""

    url: str
    params: dict[str, Any] = field(default_factory=dict)
    number: int = 1  # 1-based page number within the run

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "params": self.params, "number": self.number}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PageRequest:
        return cls(data["url"], dict(data.get("params") or {}), int(data.get("number", 1)))


@dataclass(frozen=True)
class Page:
    """A page received: its records, the parsed body, the response headers, the final URL and the
    raw body (for the byte count and checksum)."""

    records: list[Any]
    body: Any
    headers: Mapping[str, str]
    url: str
    content: bytes = b""


def _compiled(owner: str, name: str, expression: str | None) -> Any:
    if expression is None:
        return None
    if not isinstance(expression, str) or not expression.strip():
        raise ConfigurationError(owner, name, expression, "must be a non-empty JMESPath expression")
    try:
        return jmespath.compile(expression)
    except JMESPathError as exc:
        raise ConfigurationError(owner, name, expression, f"must be valid JMESPath ({exc})") from None


_NEEDS: dict[PageStyle, tuple[str, ...]] = {
    PageStyle.CURSOR: ("cursor_path", "cursor_param"),
    PageStyle.OFFSET: ("offset_param", "size_param", "page_size"),
    PageStyle.PAGE_NUMBER: ("page_param",),
    PageStyle.LINK_HEADER: (),
    PageStyle.NEXT_URL: ("next_url_path",),
}


@dataclass(frozen=True)
class Pagination:
    """How a collection is paged. ``records``: JMESPath to the list of records in the body (None:
    the body is the list; ``"[@]"``: each page's whole body is one record). ``page_size``/``size_param``:
    sent on every page (e.g. ``per_page=100``). ``output``/``max_xcom_bytes``: what a task's paginated
    call returns (see the module's docstring); a sync always returns its manifest."""

    style: PageStyle
    records: str | None = None
    page_size: int | None = None
    size_param: str | None = None
    cursor_path: str | None = None
    cursor_param: str | None = None
    offset_param: str | None = "offset"
    page_param: str | None = "page"
    first_page: int = 1
    next_url_path: str | None = None
    has_more_path: str | None = None
    total_path: str | None = None
    max_pages: int | None = None
    stop_on_empty: bool = True
    output: PageOutput = PageOutput.RECORDS
    max_xcom_bytes: int = XCOM_MAX_BYTES
    owner: str = field(default="Pagination", compare=False)

    def __post_init__(self) -> None:
        o = self.owner
        try:
            object.__setattr__(self, "style", PageStyle(self.style))
        except ValueError:
            raise ConfigurationError(
                o, "style", self.style, f"must be one of {', '.join(PageStyle)}"
            ) from None
        for name in _NEEDS[self.style]:
            if getattr(self, name) in (None, ""):
                raise ConfigurationError(
                    o, name, getattr(self, name), f"is required for style {self.style.value!r}"
                )
        if self.page_size is not None and not (isinstance(self.page_size, int) and self.page_size >= 1):
            raise ConfigurationError(o, "page_size", self.page_size, "must be an integer >= 1")
        if (self.page_size is None) != (self.size_param is None):
            raise ConfigurationError(
                o, "page_size/size_param", (self.page_size, self.size_param), "must be set together"
            )
        if self.max_pages is not None and not (isinstance(self.max_pages, int) and self.max_pages >= 1):
            raise ConfigurationError(o, "max_pages", self.max_pages, "must be an integer >= 1 or None")
        try:
            object.__setattr__(self, "output", PageOutput(self.output))
        except ValueError:
            raise ConfigurationError(
                o, "output", self.output, "must be 'records' (the records, in XCom) or 'manifest' (the files)"
            ) from None
        if not (isinstance(self.max_xcom_bytes, int) and not isinstance(self.max_xcom_bytes, bool)) or (
            self.max_xcom_bytes < 1
        ):
            raise ConfigurationError(o, "max_xcom_bytes", self.max_xcom_bytes, "must be an integer >= 1")
        if not isinstance(self.first_page, int) or self.first_page < 0:
            raise ConfigurationError(o, "first_page", self.first_page, "must be an integer >= 0")
        if self.total_path and self.style not in (PageStyle.OFFSET, PageStyle.PAGE_NUMBER):
            raise ConfigurationError(
                o, "total_path", self.total_path, "applies to styles 'offset' and 'page_number'"
            )
        for name in ("records", "cursor_path", "next_url_path", "has_more_path", "total_path"):
            object.__setattr__(self, f"_{name}", _compiled(o, name, getattr(self, name)))

    # -- reading a page ----------------------------------------------------------------------------
    def records_of(self, body: Any) -> list[Any]:
        found = body if self._records is None else self._records.search(body)  # type: ignore[attr-defined]
        if found is None:
            return []
        if not isinstance(found, list):
            where = f"records {self.records!r}" if self.records else "the response body"
            raise ValueError(f"{self.owner}: {where} must be a list of records, got {type(found).__name__}")
        return found

    def total_of(self, body: Any) -> Any:
        """The total the body reports (``total_path``), or None."""
        return None if self.total_path is None else _search(self, "total_path", body)

    def first_request(self, url: str, params: dict[str, Any] | None = None) -> PageRequest:
        params = dict(params or {})
        if self.page_size is not None:
            params[self.size_param] = self.page_size  # type: ignore[index]
        if self.style is PageStyle.OFFSET:
            params.setdefault(self.offset_param, 0)  # type: ignore[arg-type]
        elif self.style is PageStyle.PAGE_NUMBER:
            params.setdefault(self.page_param, self.first_page)  # type: ignore[arg-type]
        return PageRequest(url, params, 1)


def next_request(p: Pagination, sent: PageRequest, page: Page) -> PageRequest | StopReason:
    """The request for the page after ``page`` (sent as ``sent``), or why there is none."""
    body, count = page.body, len(page.records)
    if p.stop_on_empty and count == 0:
        return StopReason.EMPTY_PAGE
    if p.has_more_path is not None and not _search(p, "has_more_path", body):
        return StopReason.NO_MORE
    if p.max_pages is not None and sent.number >= p.max_pages:
        return StopReason.MAX_PAGES
    number = sent.number + 1
    if p.style is PageStyle.CURSOR:
        cursor = _search(p, "cursor_path", body)
        if cursor in (None, ""):
            return StopReason.NO_NEXT
        return PageRequest(sent.url, {**sent.params, p.cursor_param: cursor}, number)  # type: ignore[dict-item]
    if p.style is PageStyle.OFFSET:
        offset = int(sent.params.get(p.offset_param, 0)) + count  # type: ignore[arg-type]
        if _total_reached(p, body, offset):
            return StopReason.TOTAL_REACHED
        return PageRequest(sent.url, {**sent.params, p.offset_param: offset}, number)  # type: ignore[dict-item]
    if p.style is PageStyle.PAGE_NUMBER:
        current = int(sent.params.get(p.page_param, p.first_page))  # type: ignore[arg-type]
        size = p.page_size or count
        if _total_reached(p, body, (current - p.first_page + 1) * size):
            return StopReason.TOTAL_REACHED
        return PageRequest(sent.url, {**sent.params, p.page_param: current + 1}, number)  # type: ignore[dict-item]
    if p.style is PageStyle.LINK_HEADER:
        link = next_link(page.headers.get("Link") or page.headers.get("link") or "")
        return PageRequest(urljoin(page.url, link), {}, number) if link else StopReason.NO_NEXT
    url = _search(p, "next_url_path", body)
    return PageRequest(urljoin(page.url, str(url)), {}, number) if url else StopReason.NO_NEXT


def _search(p: Pagination, name: str, body: Any) -> Any:
    return getattr(p, f"_{name}").search(body)


def _total_reached(p: Pagination, body: Any, received: int) -> bool:
    if p.total_path is None:
        return False
    total = _search(p, "total_path", body)
    return isinstance(total, int) and received >= total


_LINK = re.compile(r"<([^>]*)>\s*((?:;\s*[^;,]+)*)")
_REL = re.compile(r'rel\s*=\s*"?([^";]+)"?', re.IGNORECASE)


def next_link(header: str) -> str | None:
    """The target of ``rel="next"`` in an RFC 8288 ``Link`` header (rel may list several types)."""
    for match in _LINK.finditer(header):
        rel = _REL.search(match[2] or "")
        if rel and "next" in rel[1].lower().split():
            return match[1]
    return None


def iterate_pages(
    caller: Any, p: Pagination, start: PageRequest, *, headers: dict[str, str] | None = None
) -> Iterator[tuple[PageRequest, Page, PageRequest | StopReason]]:
    """Send ``start`` and every following page through ``caller.call`` (a :class:`ResilientCaller`);
    yield ``(request, page, next request or stop reason)``, one page in memory at a time."""
    request: PageRequest | StopReason = start
    while isinstance(request, PageRequest):
        response = caller.call("GET", request.url, params=request.params or None, headers=headers)
        body = response.json() if response.content else None
        page = Page(p.records_of(body), body, response.headers, response.url or request.url, response.content)
        following = next_request(p, request, page)
        yield request, page, following
        request = following

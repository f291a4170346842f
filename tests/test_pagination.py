"""Pagination strategies, each against the demo API in its style, through a real ResilientCaller."""

from __future__ import annotations

import pytest
import requests

from api_orchestration import ConfigurationError, Guard, ResilientCaller, RetryPolicy
from api_orchestration.calls.pagination import (
    Page,
    PageRequest,
    Pagination,
    StopReason,
    iterate_pages,
    next_link,
    next_request,
)
from api_orchestration.state import backend_for_url


@pytest.fixture
def caller(tmp_path):
    backend = backend_for_url(f"sqlite:///{tmp_path}/state.db")
    guard = Guard(
        backend=backend, limit_key="pages", retry=RetryPolicy(max_attempts=6, base_delay=0.01, max_delay=0.05)
    )
    yield ResilientCaller(requests.Session(), guard)
    backend.close()


def _walk(caller, pagination, url, params=None):
    records, stops, pages = [], [], 0
    for _sent, page, following in iterate_pages(caller, pagination, pagination.first_request(url, params)):
        records += page.records
        pages += 1
        if isinstance(following, StopReason):
            stops.append(following)
    return records, pages, stops


def _freeze(demo, now="2030-01-01T00:00:00Z"):
    requests.post(f"{demo.url}/admin/datasets", json={"now": now}, timeout=5).raise_for_status()


def test_link_header_pages_github_issues(demo, caller):
    _freeze(demo)
    p = Pagination("link_header", page_size=100, size_param="per_page")
    records, pages, stops = _walk(caller, p, f"{demo.url}/github/repos/acme/docs/issues", {"state": "all"})
    assert pages == 10 and stops == [StopReason.NO_NEXT]
    assert sorted(r["number"] for r in records) == list(range(1, 1001))


def test_cursor_in_body_sent_back_as_starting_after(demo, caller):
    _freeze(demo)
    first = requests.get(f"{demo.url}/stripe/v1/charges", params={"limit": 1}, timeout=5).json()["data"][0]
    p = Pagination(
        "cursor",
        records="data",
        cursor_path="data[-1].id",
        cursor_param="starting_after",
        has_more_path="has_more",
        page_size=100,
        size_param="limit",
    )
    gte = first["created"] - 2 * 3600
    records, pages, stops = _walk(caller, p, f"{demo.url}/stripe/v1/charges", {"created[gte]": gte})
    numbers = [int(r["id"][3:11]) for r in records]
    assert stops == [StopReason.NO_MORE] and numbers == list(range(numbers[0], numbers[0] - len(numbers), -1))
    assert min(r["created"] for r in records) >= gte and pages == -(-len(records) // 100)


def test_offset_limit_stops_when_total_reached(demo, caller):
    _freeze(demo)
    p = Pagination(
        "offset",
        records="results",
        offset_param="offset",
        size_param="limit",
        page_size=100,
        total_path="total",
    )
    since = "2029-12-31T23:50:00+00:00"  # the 601 contacts updated in the last ten minutes
    records, pages, stops = _walk(caller, p, f"{demo.url}/crm/contacts", {"updated_since": since})
    assert stops == [StopReason.TOTAL_REACHED] and pages == 7
    assert len(records) == len({r["id"] for r in records}) == 601


def test_page_number_stops_on_total_or_on_an_empty_page(demo, caller):
    p = Pagination(
        "page_number",
        records="items",
        page_param="page",
        size_param="per_page",
        page_size=50,
        total_path="total",
    )
    records, pages, stops = _walk(caller, p, f"{demo.url}/users")
    assert (len(records), pages, stops) == (240, 5, [StopReason.TOTAL_REACHED])
    no_total = Pagination("page_number", records="items", size_param="per_page", page_size=50)
    records, pages, stops = _walk(caller, no_total, f"{demo.url}/users")
    assert (len(records), pages, stops) == (240, 6, [StopReason.EMPTY_PAGE])


def test_max_pages_and_next_url_in_the_body():
    p = Pagination("next_url", records="items", next_url_path="links.next", max_pages=2)
    sent = p.first_request("https://api.example.com/v1/things", {"q": "x"})
    page = Page([{"id": 1}], {"items": [{"id": 1}], "links": {"next": "/v1/things?cursor=abc"}}, {}, sent.url)
    following = next_request(p, sent, page)
    assert following == PageRequest("https://api.example.com/v1/things?cursor=abc", {}, 2)
    assert next_request(p, following, page) is StopReason.MAX_PAGES
    last = Page([{"id": 2}], {"items": [{"id": 2}], "links": {"next": None}}, {}, sent.url)
    assert (
        next_request(Pagination("next_url", records="items", next_url_path="links.next"), sent, last)
        is StopReason.NO_NEXT
    )


def test_link_header_parsing_follows_rfc_8288():
    header = '<https://x/i?page=3>; rel="next", <https://x/i?page=9>; rel="last"'
    assert next_link(header) == "https://x/i?page=3"
    assert next_link('<https://x/a>; rel="prev", <https://x/b>; title="n"; rel="next last"') == "https://x/b"
    assert next_link('<https://x/a>; rel="prev"') is None and next_link("") is None


@pytest.mark.parametrize("status", [429, 503, 502])
def test_pages_answered_429_and_5xx_are_retried_without_gaps(demo, caller, status):
    _freeze(demo)
    rule = {"path": "/crm/contacts", "error_rate": 0.3, "status": status, "retry_after": "0", "seed": status}
    requests.post(f"{demo.url}/admin/faults", json=rule, timeout=5).raise_for_status()
    p = Pagination("offset", records="results", size_param="limit", page_size=100, total_path="total")
    records, pages, _ = _walk(
        caller, p, f"{demo.url}/crm/contacts", {"updated_since": "2029-12-31T23:50:00Z"}
    )
    (applied,) = requests.get(f"{demo.url}/admin/faults", timeout=5).json()["rules"]
    assert applied["injected"] >= 1  # some pages were refused and retried
    assert len(records) == len({r["id"] for r in records}) == 601 and pages == 7


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"style": "cursr"},
            "style must be one of cursor, offset, page_number, link_header, next_url, got 'cursr'",
        ),
        ({"style": "cursor", "cursor_path": "data[-1].id"}, "cursor_param is required for style 'cursor'"),
        ({"style": "next_url", "next_url_path": "links..next"}, "next_url_path must be valid JMESPath"),
        ({"style": "offset", "page_size": 100}, "offset_param/size_param/page_size"),
        (
            {"style": "link_header", "page_size": 0, "size_param": "per_page"},
            "page_size must be an integer >= 1",
        ),
        ({"style": "link_header", "max_pages": 0}, "max_pages must be an integer >= 1 or None"),
        (
            {"style": "link_header", "total_path": "total"},
            "total_path applies to styles 'offset' and 'page_number'",
        ),
    ],
)
def test_bad_pagination_is_refused_with_the_field_and_the_fix(kwargs, message):
    with pytest.raises(ConfigurationError) as caught:
        Pagination(**kwargs)
    if "/" in message:
        assert "size_param" in str(caught.value) and "required" in str(caught.value)
    else:
        assert message in str(caught.value)


def test_progress_lines_count_pages_rows_failures_and_show_an_eta(demo, tmp_path, caplog):
    import datetime
    import logging

    from api_orchestration.syncs.engine import Source, run_sync
    from api_orchestration.syncs.progress import Progress
    from api_orchestration.syncs.sinks.sql import SqliteSink
    from api_orchestration.syncs.stream import Stream

    _freeze(demo)
    rule = {"path": "/crm/contacts", "error_rate": 0.3, "status": 503, "retry_after": "0", "seed": 2}
    requests.post(f"{demo.url}/admin/faults", json=rule, timeout=5).raise_for_status()
    log = logging.getLogger("test.sync.progress")
    progress = Progress(log, "sync contacts", every=0.0)
    backend = backend_for_url(f"sqlite:///{tmp_path}/state.db")
    retry = RetryPolicy(max_attempts=6, base_delay=0.01, max_delay=0.05)
    caller = ResilientCaller(
        requests.Session(),
        Guard(backend=backend, limit_key="p", retry=retry, listeners=(progress,)),
        log=progress,
    )
    p = Pagination("offset", records="results", size_param="limit", page_size=100, total_path="total")
    stream = Stream(
        "contacts", primary_key="id", cursor_field="updated_at", mode="cursor", since_param="updated_since",
        start="2029-12-31T23:50:00Z",
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="test.sync.progress"):
        manifest = run_sync(
            caller, Source(f"{demo.url}/crm/contacts", p), stream, SqliteSink(tmp_path / "sync.db"), run_id="r",
            progress=progress, now=datetime.datetime(2030, 1, 1, 1, tzinfo=datetime.UTC),
        )  # fmt: skip
    backend.close()
    lines = [
        r.getMessage() for r in caplog.records if r.name == "test.sync.progress" and r.levelno == logging.INFO
    ]
    assert manifest.rows == 601 == progress.rows and progress.pages == manifest.pages == 7
    assert progress.failures >= 1 and any("ETA" in line and "/601 rows" in line for line in lines)
    assert "failed attempts" in progress.line(final=True)

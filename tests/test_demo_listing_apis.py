"""The demo list APIs (GitHub-like, Stripe-like, offset/limit) over generated datasets, over real HTTP."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
import requests

from demo_services.datasets import Dataset


@pytest.mark.parametrize(("count", "seconds"), [(1000, 0), (1000, 10), (1000, 999), (1000, 1500), (97, 300)])
def test_updated_order_view_matches_brute_force(count, seconds):
    epoch = datetime(2026, 1, 1, 5, 30, tzinfo=UTC)
    d = Dataset("x", count, epoch, timedelta(seconds=36))
    now = epoch + timedelta(seconds=seconds, milliseconds=500)
    for since, before in [
        (None, None),
        (d.origin + timedelta(hours=1), None),
        (d.origin + timedelta(seconds=7000), epoch + timedelta(seconds=seconds // 2)),
    ]:
        ordered = sorted((d.updated_at(i, now), i) for i in range(1, count + 1))
        expected = [i for t, i in ordered if (since is None or t >= since) and (before is None or t < before)]
        view = d.by_updated(now, since, before)
        assert list(view.ids(0, len(view))) == expected
        for offset in (0, 7, len(expected) // 2, max(0, len(expected) - 3)):
            assert list(view.ids(offset, 10)) == expected[offset : offset + 10]


def _get(demo, path, **params):
    response = requests.get(f"{demo.url}{path}", params=params, timeout=10)
    response.raise_for_status()
    return response


def test_github_issues_walk_by_link_header_returns_every_issue_once(demo):
    requests.post(f"{demo.url}/admin/datasets", json={"now": "2030-01-01T00:00:00Z"}, timeout=5)
    url = f"{demo.url}/github/repos/acme/docs/issues?state=all&sort=updated&direction=asc&per_page=150"
    numbers, stamps, pages = [], [], 0
    while url:
        response = requests.get(url, timeout=10)
        body = response.json()
        pages += 1
        assert len(body) <= 100  # per_page is capped at 100, as on GitHub
        assert int(response.headers["X-RateLimit-Remaining"]) == 5000 - pages
        assert response.headers["X-RateLimit-Resource"] == "core"
        numbers += [i["number"] for i in body]
        stamps += [i["updated_at"] for i in body]
        url = response.links.get("next", {}).get("url")
    assert pages == 10 and sorted(numbers) == list(range(1, 1001)) and stamps == sorted(stamps)
    since = stamps[600]
    later = _get(
        demo, "/github/repos/acme/docs/issues", state="all", sort="updated", direction="asc", since=since
    )
    assert later.json()[0]["updated_at"] >= since and 'rel="next"' in later.headers["Link"]


def test_github_updated_at_moves_as_time_passes(demo):
    first = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    requests.post(f"{demo.url}/admin/datasets", json={"now": first.isoformat()}, timeout=5)
    since = (first - timedelta(seconds=59)).strftime("%Y-%m-%dT%H:%M:%SZ")
    query = {"state": "all", "sort": "updated", "direction": "asc", "since": since, "per_page": 100}
    assert len(_get(demo, "/github/repos/acme/widgets/issues", **query).json()) == 60  # one per second
    later = first + timedelta(seconds=30)
    requests.post(f"{demo.url}/admin/datasets", json={"now": later.isoformat()}, timeout=5)
    assert len(_get(demo, "/github/repos/acme/widgets/issues", **query).json()) == 90


def test_github_rate_limit_exhausted_answers_429_with_retry_after(demo):
    requests.post(f"{demo.url}/admin/datasets", json={"rate_limit_per_hour": 2}, timeout=5)
    for _ in range(2):
        _get(demo, "/github/repos/acme/docs/issues")
    response = requests.get(f"{demo.url}/github/repos/acme/docs/issues", timeout=5)
    assert response.status_code == 429 and response.headers["X-RateLimit-Remaining"] == "0"
    assert int(response.headers["Retry-After"]) >= 1
    assert requests.get(f"{demo.url}/github/repos/acme/nope/issues", timeout=5).status_code == 404


def test_stripe_charges_cursor_walk_and_new_charges(demo):
    now = int(time.time())
    requests.post(
        f"{demo.url}/admin/datasets", json={"now": datetime.fromtimestamp(now, UTC).isoformat()}, timeout=5
    )
    gte = now - 3 * 3600  # at least 2,000 charges: 1,000 an hour before the server started, then one a second
    body = _get(demo, "/stripe/v1/charges", limit=100, **{"created[gte]": gte}).json()
    assert body["object"] == "list" and body["url"] == "/v1/charges" and body["has_more"] is True
    ids, created = [], []
    while True:
        ids += [c["id"] for c in body["data"]]
        created += [c["created"] for c in body["data"]]
        if not body["has_more"]:
            break
        body = _get(
            demo, "/stripe/v1/charges", limit=100, starting_after=ids[-1], **{"created[gte]": gte}
        ).json()
    assert len(ids) == len(set(ids)) and created == sorted(created, reverse=True) and min(created) >= gte
    numbers = [int(i[3:11]) for i in ids]
    assert len(ids) >= 2000 and numbers == list(range(numbers[0], numbers[0] - len(ids), -1))  # no gaps
    bad = requests.get(f"{demo.url}/stripe/v1/charges", params={"limit": 101}, timeout=5)
    assert bad.status_code == 400 and bad.json()["field"] == "limit"
    newer = datetime.fromtimestamp(now + 10, UTC).isoformat()
    requests.post(f"{demo.url}/admin/datasets", json={"now": newer}, timeout=5)
    assert len(_get(demo, "/stripe/v1/charges", limit=100, ending_before=ids[0]).json()["data"]) == 10


def test_crm_contacts_offset_walk_reaches_total_and_schema_change_adds_fields(demo):
    frozen = datetime(2031, 1, 1, tzinfo=UTC)
    requests.post(f"{demo.url}/admin/datasets", json={"now": frozen.isoformat()}, timeout=5)
    since = (frozen - timedelta(minutes=5)).isoformat()
    seen, offset, total = [], 0, None
    while total is None or offset < total:
        body = _get(demo, "/crm/contacts", offset=offset, limit=100, updated_since=since).json()
        total, offset = body["total"], offset + body["limit"]
        seen += body["results"]
    assert total == 301 and len({c["id"] for c in seen}) == 301 and "phone" not in seen[0]
    requests.post(f"{demo.url}/admin/datasets", json={"schema": 2}, timeout=5)
    assert "phone" in _get(demo, "/crm/contacts", limit=1).json()["results"][0]
    bad = requests.post(f"{demo.url}/admin/datasets", json={"schema": 3}, timeout=5)
    assert bad.status_code == 400 and bad.json()["field"] == "schema"

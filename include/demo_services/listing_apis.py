"""List APIs in the three styles syncs meet, over large generated datasets (:mod:`demo_services.datasets`).

* GitHub-like: ``GET /github/repos/<owner>/<repo>/issues?state=all&sort=updated&direction=asc&since=&per_page=&page=``
  (``per_page`` default 30, capped at 100; RFC 8288 ``Link`` with ``next``/``last``/``first``/``prev``;
  ``X-RateLimit-Limit/Remaining/Used/Reset/Resource``, 5,000 per hour; an exhausted limit answers 429
  with ``x-ratelimit-remaining: 0`` and ``Retry-After``). Repositories: ``acme/widgets`` (100,000
  issues), ``acme/gadgets`` (5,000), ``acme/docs`` (1,000), listed by ``GET /github/orgs/acme/repos``
  (``per_page``, ``page``, ``Link``), the parent of a sync partitioned per repository.
* Stripe-like: ``GET /stripe/v1/charges?limit=&starting_after=&ending_before=&created[gte]=&created[lt]=``
  answers ``{"object": "list", "url", "data", "has_more"}``, newest first; ``limit`` 1..100 (default 10).
  100,000 charges at the start, one more every second.
* Offset/limit: ``GET /crm/contacts?offset=&limit=&updated_since=&updated_before=`` answers
  ``{"results", "total", "offset", "limit"}`` in ``updated_at`` order; ``limit`` 1..100 (default 100);
  while more follow, HubSpot-style ``"paging": {"next": {"offset", "link"}}`` holds the next page's URL.

Records of GitHub issues and CRM contacts are updated one per second (``updated_at`` moves), so an
incremental run finds something new. ``POST /admin/datasets`` sets ``now`` (freeze the datasets'
clock; null: follow the server's), ``schema`` (2 adds fields: a schema change) and
``rate_limit_per_hour``; ``GET`` shows them; ``POST /admin/reset`` restores the defaults.
"""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from demo_services.common import GET, POST, ServiceError, iso, json_object
from demo_services.datasets import Dataset
from demo_services.routing import Request, Response, Route
from demo_services.state import DemoState

GITHUB_REPOS = {"acme/widgets": 100_000, "acme/gadgets": 5_000, "acme/docs": 1_000}
CHARGES = 100_000
CONTACTS = 100_000
STEP = timedelta(seconds=3.6)  # 1,000 creations per hour: 100,000 records span 100 hours
RATE_LIMIT_PER_HOUR = 5_000
_LABELS = ("bug", "enhancement", "docs", "good first issue", "question", "wontfix", "performance")
_WORDS = ("crash", "retry", "timeout", "page", "cursor", "sync", "schema", "limit", "token", "cache")
_USERS = ("octocat", "hubot", "monalisa", "defunkt", "mojombo", "pjhyett", "wycats", "ezmobius")
_CURRENCIES = ("usd", "eur", "gbp")
_STATUSES = ("succeeded", "succeeded", "succeeded", "pending", "failed")


def _digest(*parts: Any) -> int:
    """A stable 64-bit number for ``parts`` (the same on every server and Python)."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "big")


class Datasets:
    """The datasets of one server and their settings (frozen clock, schema version, rate limit)."""

    def __init__(self, started_at: float) -> None:
        epoch = datetime.fromtimestamp(int(started_at), UTC)
        self.issues = {
            repo: Dataset(f"github:{repo}", n, epoch, STEP * (100_000 / n))
            for repo, n in GITHUB_REPOS.items()
        }
        self.charges = Dataset("stripe:charges", CHARGES, epoch, STEP, growing=True)
        self.contacts = Dataset("crm:contacts", CONTACTS, epoch, STEP)
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.frozen: datetime | None = None
            self.schema = 1
            self.rate_limit = RATE_LIMIT_PER_HOUR
            self._used: dict[tuple[str, int], int] = {}

    def now(self) -> datetime:
        return self.frozen or datetime.now(UTC)

    def settings(self) -> dict[str, Any]:
        return {
            "now": iso(self.now()),
            "frozen": self.frozen is not None,
            "schema": self.schema,
            "rate_limit_per_hour": self.rate_limit,
            "datasets": {
                **{f"github:{repo}": d.count for repo, d in self.issues.items()},
                "stripe:charges": self.charges.size(self.now()),
                "crm:contacts": self.contacts.count,
            },
        }

    def take_rate_limit(self, who: str) -> tuple[int, int, int]:
        """Count one call of ``who`` in the current hour: (used, remaining, reset epoch seconds)."""
        now = datetime.now(UTC)
        hour = int(now.timestamp()) // 3600
        with self._lock:
            used = self._used[who, hour] = self._used.get((who, hour), 0) + 1
        return used, max(0, self.rate_limit - used), (hour + 1) * 3600


def datasets_of(state: DemoState) -> Datasets:
    return state.extension(Datasets, lambda: Datasets(state.started_at))


def _instant(request: Request, name: str) -> datetime | None:
    raw = (request.query.get(name) or "").strip().replace(" ", "+")
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise ServiceError(422, "invalid_query", f"{name!r} must be ISO-8601 with Z or an offset", field=name)
    return moment


def _int(request: Request, name: str, default: int, low: int, high: int | None = None) -> int:
    raw = request.query.get(name) or ""
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise ServiceError(400, "invalid_query", f"{name!r} must be an integer in {bound}", field=name)
    return value


def _base_url(request: Request) -> str:
    return f"http://{request.headers.get('host', '127.0.0.1')}{request.path}"


# -- GitHub-like issues ---------------------------------------------------------------------------
def _issue(d: Dataset, number: int, now: datetime, schema: int) -> dict[str, Any]:
    revision = d.revision(number, now)
    seed = _digest(d.name, number)
    state_seed = _digest(d.name, number, revision)
    closed = state_seed % 3 == 0
    updated = d.updated_at(number, now)
    issue: dict[str, Any] = {
        "id": seed % 9_000_000_000 + 1_000_000_000,
        "number": number,
        "title": f"{_WORDS[seed % 10].capitalize()} {_WORDS[seed // 10 % 10]} on {_WORDS[seed // 100 % 10]}",
        "user": {"login": _USERS[seed // 1000 % len(_USERS)], "id": seed // 1000 % len(_USERS) + 1},
        "labels": [{"name": _LABELS[(seed >> s) % len(_LABELS)]} for s in range(0, 8 * (seed % 3), 8)],
        "state": "closed" if closed else "open",
        "comments": revision * 2 + seed % 5,
        "created_at": _github_time(d.created_at(number)),
        "updated_at": _github_time(updated),
        "closed_at": _github_time(updated) if closed else None,
        "body": f"Issue {number}: steps to reproduce {seed % 997}.",
    }
    if schema >= 2:
        issue["reactions"] = {"total_count": state_seed % 11, "+1": state_seed % 7}
        issue["milestone"] = f"v{1 + seed % 4}.0"
    return issue


def _github_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _link(request: Request, page: int, last: int) -> str:
    def url(number: int) -> str:
        return f"<{_base_url(request)}?{urlencode({**request.query, 'page': number})}>"

    links = []
    if page < last:
        links += [f'{url(page + 1)}; rel="next"', f'{url(last)}; rel="last"']
    if page > 1:
        links += [f'{url(1)}; rel="first"', f'{url(page - 1)}; rel="prev"']
    return ", ".join(links)


def _github_rate_limit(request: Request, datasets: Datasets) -> tuple[dict[str, str], Response | None]:
    """Count the call against the caller's hourly limit: the ``X-RateLimit-*`` headers, and the 429
    to answer instead when the limit is exhausted."""
    who = request.headers.get("authorization") or "anonymous"
    used, remaining, reset = datasets.take_rate_limit(who)
    headers = {
        "X-RateLimit-Limit": str(datasets.rate_limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Used": str(min(used, datasets.rate_limit)),
        "X-RateLimit-Reset": str(reset),
        "X-RateLimit-Resource": "core",
    }
    if used > datasets.rate_limit:
        wait = max(1, reset - int(datetime.now(UTC).timestamp()))
        body = {"message": "API rate limit exceeded", "documentation_url": "https://docs.github.com/rest"}
        return headers, Response(429, body, {**headers, "Retry-After": str(wait)})
    return headers, None


def list_org_repos(request: Request, state: DemoState) -> Response:
    """GitHub's ``GET /orgs/{org}/repos?per_page=&page=``: the org's repositories by name, ``Link``-paged
    (the parent listing of a sync partitioned per repository)."""
    datasets = datasets_of(state)
    org = request.params["org"]
    names = sorted(repo for repo in datasets.issues if repo.split("/")[0] == org)
    if not names:
        return Response(404, {"message": "Not Found", "documentation_url": "https://docs.github.com/rest"})
    headers, limited = _github_rate_limit(request, datasets)
    if limited is not None:
        return limited
    per_page = min(_int(request, "per_page", 30, 1), 100)
    page = _int(request, "page", 1, 1)
    chunk = names[(page - 1) * per_page : page * per_page]
    repos = [
        {
            "id": _digest("repo", full) % 900_000_000 + 100_000_000,
            "name": full.split("/")[1],
            "full_name": full,
            "owner": {"login": org},
            "private": False,
            "issues_count": datasets.issues[full].count,
            "issues_url": f"http://{request.headers.get('host', '127.0.0.1')}/github/repos/{full}/issues",
        }
        for full in chunk
    ]
    link = _link(request, page, max(1, -(-len(names) // per_page)))
    return Response(200, repos, {**headers, **({"Link": link} if link else {})})


def list_issues(request: Request, state: DemoState) -> Response:
    """GitHub's ``GET /repos/{owner}/{repo}/issues`` over a generated repository."""
    datasets = datasets_of(state)
    repo = f"{request.params['owner']}/{request.params['repo']}"
    dataset = datasets.issues.get(repo)
    if dataset is None:
        return Response(404, {"message": "Not Found", "documentation_url": "https://docs.github.com/rest"})
    headers, limited = _github_rate_limit(request, datasets)
    if limited is not None:
        return limited
    sort, direction = request.query.get("sort", "created"), request.query.get("direction", "desc")
    if sort not in ("created", "updated") or direction not in ("asc", "desc"):
        raise ServiceError(422, "invalid_query", "sort must be created|updated, direction asc|desc")
    if request.query.get("state", "open") not in ("open", "closed", "all"):
        raise ServiceError(422, "invalid_query", "state must be open, closed or all", field="state")
    per_page = min(_int(request, "per_page", 30, 1), 100)  # GitHub caps per_page at 100 silently
    page = _int(request, "page", 1, 1)
    now = datasets.now()
    view = dataset.by_updated(now, _instant(request, "since"), None)
    total = len(view)
    last = max(1, -(-total // per_page))
    start = (page - 1) * per_page
    if sort == "updated" and direction == "asc":
        numbers = list(view.ids(start, per_page))
    elif sort == "updated":
        numbers = list(view.ids(max(0, total - start - per_page), max(0, min(per_page, total - start))))[::-1]
    else:  # by creation: issue number order (``since`` still filters on updated_at)
        numbers = [n for n in view.ids(0, total)] if total < dataset.count else list(range(1, total + 1))
        numbers.sort(reverse=direction == "desc")
        numbers = numbers[start : start + per_page]
    issues = [_issue(dataset, n, now, datasets.schema) for n in numbers]
    wanted = request.query.get("state", "open")
    if wanted != "all":
        issues = [i for i in issues if i["state"] == wanted]
    link = _link(request, page, last)
    return Response(200, issues, {**headers, **({"Link": link} if link else {})})


# -- Stripe-like charges --------------------------------------------------------------------------
def _charge_id(number: int) -> str:
    return f"ch_{number:08d}{_digest('charge', number) % 36**6:06x}"[:17]


def _charge_number(raw: str, name: str) -> int:
    if not raw.startswith("ch_") or not raw[3:11].isdigit():
        raise ServiceError(400, "resource_missing", f"No such charge: '{raw}'", param=name)
    return int(raw[3:11])


def _charge(number: int, created: datetime, schema: int) -> dict[str, Any]:
    seed = _digest("charge", number)
    charge: dict[str, Any] = {
        "id": _charge_id(number),
        "object": "charge",
        "amount": 100 + seed % 99_900,
        "currency": _CURRENCIES[seed // 7 % 3],
        "status": _STATUSES[seed // 11 % len(_STATUSES)],
        "created": int(created.timestamp()),
        "customer": f"cus_{seed // 13 % 5000:06d}",
        "livemode": False,
        "metadata": {"order_id": f"o-{number}"},
    }
    if schema >= 2:
        charge["payment_method_details"] = {
            "type": "card",
            "card": {"brand": "visa", "last4": f"{seed % 10000:04d}"},
        }
    return charge


def list_charges(request: Request, state: DemoState) -> Response:
    """Stripe's ``GET /v1/charges``: newest first, ``starting_after``/``ending_before`` cursors."""
    datasets = datasets_of(state)
    d, now = datasets.charges, datasets.now()
    limit = _int(request, "limit", 10, 1, 100)
    newest = d.size(now)
    low, high = 1, newest  # inclusive range of numbers, filtered by created[gte] / created[lt]
    gte, lt = request.query.get("created[gte]"), request.query.get("created[lt]")
    if gte:
        low = max(low, _first_created_at_or_after(d, _int(request, "created[gte]", 0, 0), newest))
    if lt:
        high = min(high, _first_created_at_or_after(d, _int(request, "created[lt]", 0, 0), newest) - 1)
    after, before = request.query.get("starting_after"), request.query.get("ending_before")
    if after and before:
        raise ServiceError(400, "invalid_request_error", "use starting_after or ending_before, not both")
    if after:
        number = _charge_number(after, "starting_after")
        top = min(high, number - 1)
        numbers = list(range(top, max(low, top - limit + 1) - 1, -1))
        has_more = bool(numbers) and numbers[-1] > low
    elif before:
        number = _charge_number(before, "ending_before")
        bottom = max(low, number + 1)
        numbers = list(range(min(high, bottom + limit - 1), bottom - 1, -1))
        has_more = bool(numbers) and numbers[0] < high
    else:
        numbers = list(range(high, max(low, high - limit + 1) - 1, -1))
        has_more = bool(numbers) and numbers[-1] > low
    data = [_charge(n, d.created_at(n), datasets.schema) for n in numbers]
    return Response(200, {"object": "list", "url": "/v1/charges", "has_more": has_more, "data": data})


def _first_created_at_or_after(d: Dataset, epoch_seconds: int, newest: int) -> int:
    """The first charge number created at or after ``epoch_seconds`` (``newest + 1`` if none)."""
    low, high = 1, newest + 1
    while low < high:
        mid = (low + high) // 2
        if int(d.created_at(mid).timestamp()) >= epoch_seconds:
            high = mid
        else:
            low = mid + 1
    return low


# -- offset/limit CRM contacts --------------------------------------------------------------------
def _contact(d: Dataset, number: int, now: datetime, schema: int) -> dict[str, Any]:
    seed, revision = _digest(d.name, number), d.revision(number, now)
    contact: dict[str, Any] = {
        "id": number,
        "email": f"contact{number}@example.com",
        "first_name": _USERS[seed % len(_USERS)].capitalize(),
        "lifecycle_stage": ("lead", "customer", "evangelist")[(seed + revision) % 3],
        "score": (seed + revision * 17) % 100,
        "created_at": iso(d.created_at(number)),
        "updated_at": iso(d.updated_at(number, now)),
    }
    if schema >= 2:
        contact["phone"] = f"+1-555-{seed % 10_000:04d}"
    return contact


def list_contacts(request: Request, state: DemoState) -> Response:
    """``GET /crm/contacts?offset=&limit=&updated_since=&updated_before=`` with ``total``."""
    datasets = datasets_of(state)
    d, now = datasets.contacts, datasets.now()
    offset, limit = _int(request, "offset", 0, 0), _int(request, "limit", 100, 1, 100)
    view = d.by_updated(now, _instant(request, "updated_since"), _instant(request, "updated_before"))
    results = [_contact(d, n, now, datasets.schema) for n in view.ids(offset, limit)]
    body: dict[str, Any] = {"results": results, "total": len(view), "offset": offset, "limit": limit}
    if offset + limit < len(view):  # HubSpot-style: the next page's full URL (absent on the last page)
        query = {**request.query, "offset": offset + limit, "limit": limit}
        body["paging"] = {
            "next": {"offset": offset + limit, "link": f"{_base_url(request)}?{urlencode(query)}"}
        }
    return Response(200, body)


# -- admin ----------------------------------------------------------------------------------------
def admin_datasets(request: Request, state: DemoState) -> Response:
    """``GET``/``POST /admin/datasets``: ``{"now": iso | null, "schema": 1 | 2, "rate_limit_per_hour": n}``."""
    datasets = datasets_of(state)
    if request.method == "POST":
        body = json_object(request)
        unknown = set(body) - {"now", "schema", "rate_limit_per_hour"}
        if unknown:
            raise ServiceError(400, "invalid_field", f"unknown field {sorted(unknown)[0]!r}")
        if "now" in body:
            raw = body["now"]
            try:
                frozen = None if raw is None else datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
            except ValueError:
                frozen = None
                raw = object()
            if raw is not None and (frozen is None or frozen.tzinfo is None):
                raise ServiceError(
                    400, "invalid_field", "'now' must be ISO-8601 with an offset, or null", field="now"
                )
            datasets.frozen = frozen
        if "schema" in body:
            if body["schema"] not in (1, 2):
                raise ServiceError(400, "invalid_field", "'schema' must be 1 or 2", field="schema")
            datasets.schema = body["schema"]
        if "rate_limit_per_hour" in body:
            value = body["rate_limit_per_hour"]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ServiceError(400, "invalid_field", "'rate_limit_per_hour' must be an integer >= 1")
            datasets.rate_limit = value
    return Response(200, datasets.settings())


ROUTES: tuple[Route, ...] = (
    Route("/github/orgs/<org>/repos", list_org_repos, GET),
    Route("/github/repos/<owner>/<repo>/issues", list_issues, GET),
    Route("/stripe/v1/charges", list_charges, GET),
    Route("/crm/contacts", list_contacts, GET),
)
ADMIN_ROUTES: tuple[Route, ...] = (Route("/admin/datasets", admin_datasets, GET | POST, record=False),)

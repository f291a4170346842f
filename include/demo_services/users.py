"""Users, their posts and analytics: deterministic read APIs for incremental syncs and enrichment.

240 users (ids 1..240). Their ``updated_at`` are 12 minutes apart over the 48 hours before the
server started (ids shuffled over the slots), so every hour-long window in that range holds 5
users; ``POST /admin/users/<id>/touch`` moves one user's ``updated_at`` to now until reset. Posts
(0..12 per user) and analytics scores derive from the user id alone.
"""

from __future__ import annotations

import random
import re
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from demo_services.common import GET, POST, ServiceError, health_route, iso, page
from demo_services.routing import Request, Response, Route
from demo_services.state import DemoState

USER_COUNT = 240
SPAN = timedelta(hours=48)
STEP = SPAN / USER_COUNT  # 12 minutes
_SLOT_STRIDE = 97  # coprime with 240: a fixed shuffle of ids over the time slots
_FIRST = ("Ada", "Alan", "Barbara", "Claude", "Donald", "Edsger", "Frances", "Grace", "Hedy", "Ivan")
_FIRST += ("John", "Katherine", "Linus", "Margaret", "Niklaus", "Radia", "Ken", "Shafi", "Tim", "Yukihiro")
_LAST = ("Archer", "Baker", "Carter", "Dalton", "Ellis", "Foster", "Garcia", "Hughes", "Ito", "Jensen")
_LAST += ("Khan", "Lopez")
_WORDS = ("api", "saga", "retry", "queue", "cache", "graph", "stream", "batch", "shard", "limit", "event")
SEGMENTS = ("new", "active", "dormant", "churn_risk", "vip", "mobile", "desktop", "newsletter")
_OFFSET_WITHOUT_PLUS = re.compile(r" (\d{2}(?::?\d{2})?)$")  # "+" decoded to " " in a query string


class Directory:
    """The users of one server: fixed base times from the start, plus touched overrides."""

    def __init__(self, started_at: float) -> None:
        start = datetime.fromtimestamp(started_at, UTC).replace(second=0, microsecond=0)
        self.origin = start - SPAN
        self._lock = threading.Lock()
        self._touched: dict[int, datetime] = {}

    def reset(self) -> None:
        with self._lock:
            self._touched.clear()

    def base_time(self, user_id: int) -> datetime:
        return self.origin + STEP * ((user_id - 1) * _SLOT_STRIDE % USER_COUNT)

    def updated_at(self, user_id: int) -> datetime:
        with self._lock:
            return self._touched.get(user_id) or self.base_time(user_id)

    def touch(self, user_id: int) -> None:
        with self._lock:
            self._touched[user_id] = datetime.now(UTC)

    def user(self, user_id: int) -> dict[str, Any]:
        first, last = _FIRST[(user_id - 1) % len(_FIRST)], _LAST[(user_id - 1) // len(_FIRST) % len(_LAST)]
        return {
            "id": user_id,
            "name": f"{first} {last}",
            "email": f"{first}.{last}.{user_id}@example.com".lower(),
            "updated_at": iso(self.updated_at(user_id)),
        }


def directory_of(state: DemoState) -> Directory:
    return state.extension(Directory, lambda: Directory(state.started_at))


def posts_of(user_id: int) -> list[dict[str, Any]]:
    """The user's posts (0..12), the same on every server."""
    rng = random.Random(user_id * 104_729)  # user 7 (the example DAG's) has posts
    return [
        {
            "id": user_id * 100 + n,
            "user_id": user_id,
            "title": " ".join(rng.sample(_WORDS, 3)).capitalize(),
            "likes": rng.randint(0, 500),
        }
        for n in range(1, rng.randint(0, 12) + 1)
    ]


def analytics_of(user_id: int) -> dict[str, Any]:
    """The user's score (0..100) and segments, the same on every server."""
    rng = random.Random(user_id * 7919)
    score = round(rng.uniform(0, 100), 2)
    segments = sorted(rng.sample(SEGMENTS, rng.randint(1, 3)), key=SEGMENTS.index)
    return {"user_id": user_id, "score": score, "segments": segments}


def _user_id(request: Request) -> int:
    raw = request.params["id"]
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= USER_COUNT:
        raise ServiceError(404, "not_found", f"no user {raw!r}")
    return int(raw)


def _instant(request: Request, name: str) -> datetime | None:
    raw = (request.query.get(name) or "").strip()
    if not raw:
        return None
    raw = _OFFSET_WITHOUT_PLUS.sub(r"+\1", raw)
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        detail = f"query parameter {name!r} must be ISO-8601 with a UTC offset or Z"
        raise ServiceError(400, "invalid_query", detail, field=name)
    return moment


def list_users(request: Request, state: DemoState) -> Response:
    """``GET /users?page&per_page&updated_since&updated_before`` (since inclusive, before exclusive)."""
    since, before = _instant(request, "updated_since"), _instant(request, "updated_before")
    directory = directory_of(state)
    users = []
    for user_id in range(1, USER_COUNT + 1):
        updated = directory.updated_at(user_id)
        if (since is None or updated >= since) and (before is None or updated < before):
            users.append(user_id)
    envelope = page(request, users)
    envelope["items"] = [directory.user(user_id) for user_id in envelope["items"]]
    return Response(200, envelope)


def get_user(request: Request, state: DemoState) -> Response:
    return Response(200, directory_of(state).user(_user_id(request)))


def list_posts(request: Request, state: DemoState) -> Response:
    return Response(200, page(request, posts_of(_user_id(request))))


def get_analytics(request: Request, state: DemoState) -> Response:
    return Response(200, analytics_of(_user_id(request)))


def admin_touch(request: Request, state: DemoState) -> Response:
    """``POST /admin/users/<id>/touch``: the user's ``updated_at`` becomes now."""
    user_id = _user_id(request)
    directory = directory_of(state)
    directory.touch(user_id)
    return Response(200, directory.user(user_id))


ROUTES: tuple[Route, ...] = (
    health_route("users"),
    health_route("analytics"),
    Route("/users", list_users, GET),
    Route("/users/<id>", get_user, GET),
    Route("/users/<id>/posts", list_posts, GET),
    Route("/analytics/users/<id>", get_analytics, GET),
)
ADMIN_ROUTES: tuple[Route, ...] = (Route("/admin/users/<id>/touch", admin_touch, POST, record=False),)

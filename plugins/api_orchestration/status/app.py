"""The status API and page: a FastAPI app the Airflow plugin mounts under ``/api-orchestration``.

Plugin apps are not behind Airflow's authentication, so every route here authenticates itself with
Airflow's own dependency (``airflow.api_fastapi.core_api.security.get_user``: a JWT from
``Authorization: Bearer`` or the ``_token`` cookie the Airflow UI sets at login) and asks the
configured auth manager for permission, treating breakers and limiters like pools (shared
capacity): reading needs ``GET`` on pools (SimpleAuthManager: viewer and up), resetting a breaker
needs ``PUT`` on pools (op and up).

The page is rendered on the server and needs no JavaScript, because the Airflow UI shows it in a
sandboxed iframe (scripts off, and the frame's own requests carry no cookie). Its buttons are
forms that post a form token (:mod:`~api_orchestration.status.form_token`): HMAC-signed, valid
``FORM_TOKEN_SECONDS``, bound to the signed-in user and to one action (refresh the page, or reset
one named breaker), refused by Airflow's own API. That also makes them immune to cross-site request
forgery.

Routes (relative to the mount):

- ``GET /`` the page (no credentials: redirect to Airflow's login, then back);
  ``POST /`` the same page (the Refresh button); ``POST /breakers/{key}/reset`` reset, then the page;
- ``GET /api/status``, ``/api/breakers``, ``/api/breakers/{key}``, ``/api/limiters``,
  ``/api/limiters/{key}``, ``/api/sagas``, ``/api/caches``: JSON;
- ``POST /api/breakers/{key}/reset``: JSON.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode, urlsplit

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from api_orchestration import metrics
from api_orchestration.state import StateBackend, get_backend
from api_orchestration.status import form_token
from api_orchestration.status.form_token import FORM_TOKEN_SECONDS, FormAction
from api_orchestration.status.views import breaker_view, cache_views, collect_status, limiter_view

logger = logging.getLogger(__name__)
MOUNT = "/api-orchestration"
__all__ = ["FORM_TOKEN_SECONDS", "MOUNT", "create_app"]
RESOURCE = "pools"  # the auth-manager resource whose permissions guard breakers and limiters
_templates = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=select_autoescape(["html"]),
)
_templates.filters["pct"] = lambda v: "—" if v is None else f"{v * 100:.0f} %"


class _LoginRequired(Exception):
    """The page was opened without valid credentials."""


# -- authentication and authorisation (Airflow's own) --------------------------------------------
async def _user_from_request(request: Request) -> Any:
    """Airflow's ``get_user``: a Bearer JWT, else the UI's ``_token`` cookie. 401/403 otherwise."""
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user

    return await get_user(request, None, await bearer_scheme(request))


async def _user_from_form(request: Request, action: FormAction, key: str = "") -> Any:
    """The user whose form token (minted when they loaded the page) was posted for ``action``."""
    form = await request.form()
    return form_token.verify(form.get("token"), action, key)


def _allowed(user: Any, method: str) -> bool:
    from airflow.api_fastapi.app import get_auth_manager

    return bool(get_auth_manager().is_authorized_pool(method=method, user=user))


def _require(user: Any, method: str) -> None:
    if not _allowed(user, method):
        action = "reset breakers" if method != "GET" else "read breaker and limiter status"
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"Forbidden: may not {action} (needs {method} on {RESOURCE})"
        )


def _same_origin(request: Request) -> None:
    """Cookie-authenticated writes must come from this site (cross-site request forgery)."""
    if request.headers.get("authorization"):
        return  # a Bearer token is not sent by browsers on their own
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or urlsplit(source).netloc != request.headers.get("host"):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Forbidden: cross-site request")


async def reader(request: Request) -> Any:
    user = await _user_from_request(request)
    _require(user, "GET")
    return user


async def resetter(request: Request) -> Any:
    user = await _user_from_request(request)
    _same_origin(request)
    _require(user, "PUT")
    return user


Reader = Annotated[Any, Depends(reader)]
Resetter = Annotated[Any, Depends(resetter)]


def _username(user: Any) -> str:
    try:
        return str(user.get_name())
    except Exception:
        return "?"


# -- the app -------------------------------------------------------------------------------------
def create_app(backend: StateBackend | Callable[[], StateBackend] | None = None) -> FastAPI:
    """The status app. ``backend``: a backend or a factory (default: the configured one, looked up
    on each request so it follows ``[api_orchestration] state_url``)."""

    def store() -> StateBackend:
        if backend is None:
            return get_backend()
        return backend() if callable(backend) and not isinstance(backend, StateBackend) else backend

    app = FastAPI(
        title="api-orchestration status",
        description="Circuit breakers, rate limiters and recent saga outcomes of api-orchestration.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )

    @app.exception_handler(_LoginRequired)
    async def _to_login(request: Request, exc: _LoginRequired) -> RedirectResponse:
        root = request.scope.get("root_path", "")
        airflow_root = root.removesuffix(MOUNT)
        query = urlencode({"next": f"{airflow_root}{MOUNT}/"})
        return RedirectResponse(f"{airflow_root}/auth/login?{query}", status_code=status.HTTP_303_SEE_OTHER)

    def _key_or_404(rows: list[dict[str, Any]], key: str, what: str) -> dict[str, Any]:
        for row in rows:
            if row["key"] == key:
                return row
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no {what} with key {key!r}")

    def _reset(key: str, user: Any) -> dict[str, Any]:
        b = store()
        if b.breaker_status(key) is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no breaker with key {key!r}")
        b.breaker_reset(key)
        logger.warning("circuit %r reset to closed by %s (status page)", key, _username(user))
        metrics.incr("breaker.reset", key)
        after = b.breaker_status(key)
        assert after is not None
        return breaker_view(after)

    # -- JSON --------------------------------------------------------------------------------------
    @app.get("/api/status")
    def api_status(user: Reader, sagas: int = 20) -> dict[str, Any]:
        """Breakers, limiters and the newest ``sagas`` saga outcomes."""
        return collect_status(store(), sagas=max(0, min(sagas, 100)))

    @app.get("/api/breakers")
    def api_breakers(user: Reader) -> list[dict[str, Any]]:
        return collect_status(store(), sagas=0)["breakers"]

    @app.get("/api/breakers/{key:path}")
    def api_breaker(key: str, user: Reader) -> dict[str, Any]:
        return _key_or_404(collect_status(store(), sagas=0)["breakers"], key, "breaker")

    @app.post("/api/breakers/{key:path}/reset")
    def api_reset(key: str, user: Resetter) -> dict[str, Any]:
        """Close the breaker ``key`` now (empty window); needs PUT on pools."""
        return {"key": key, "reset": True, "by": _username(user), "breaker": _reset(key, user)}

    @app.get("/api/limiters")
    def api_limiters(user: Reader) -> list[dict[str, Any]]:
        return collect_status(store(), sagas=0)["limiters"]

    @app.get("/api/limiters/{key:path}")
    def api_limiter(key: str, user: Reader) -> dict[str, Any]:
        backend = store()
        found = backend.limiter_status(key)
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no limiter with key {key!r}")
        row = limiter_view(found)
        if found.limit_permits:  # a multi-window key: its longer windows too
            rows = {r["key"]: r for r in collect_status(backend, sagas=0)["limiters"]}
            row = rows.get(key, row)
        return row

    @app.get("/api/caches")
    def api_caches(user: Reader) -> list[dict[str, Any]]:
        """The shared response cache: entries and bytes per key."""
        return cache_views(store())

    @app.get("/api/sagas")
    def api_sagas(user: Reader, limit: int = 20) -> list[dict[str, Any]]:
        return collect_status(store(), sagas=max(1, min(limit, 100)))["sagas"]

    @app.get("/api/streams")
    def api_streams(user: Reader) -> list[dict[str, Any]]:
        """The last run of each sync stream: window, cursor, rows, pages, DAG and run."""
        return collect_status(store(), sagas=0)["streams"]

    # -- the page ----------------------------------------------------------------------------------
    async def page(request: Request, user: Any, message: str = "", code: int = 200) -> HTMLResponse:
        _require(user, "GET")
        data = await run_in_threadpool(collect_status, store(), 20)
        html = _templates.get_template("status.html").render(
            **data,
            base=request.scope.get("root_path", "") or MOUNT,
            quote=lambda k: quote(k, safe=""),
            user=_username(user),
            can_reset=_allowed(user, "PUT"),
            token=form_token.mint(user, FormAction.VIEW),
            reset_token=lambda key: form_token.mint(user, FormAction.RESET, key),
            message=message,
        )
        return HTMLResponse(html, status_code=code, headers={"Cache-Control": "no-store"})

    async def page_user(reading: Awaitable[Any]) -> Any:
        """The page's user; no or a bad session sends the browser to Airflow's login."""
        try:
            return await reading
        except HTTPException as exc:
            if exc.status_code in (401, 403):
                raise _LoginRequired() from exc
            raise

    @app.get("/", response_class=HTMLResponse)
    async def page_get(request: Request) -> HTMLResponse:
        return await page(request, await page_user(_user_from_request(request)))

    @app.post("/", response_class=HTMLResponse)
    async def page_refresh(request: Request) -> HTMLResponse:
        return await page(request, await page_user(_user_from_form(request, FormAction.VIEW)))

    @app.post("/breakers/{key:path}/reset", response_class=HTMLResponse)
    async def page_reset(key: str, request: Request) -> HTMLResponse:
        user = await _user_from_form(request, FormAction.RESET, key)  # 401/403 without its form token
        _require(user, "PUT")
        await run_in_threadpool(_reset, key, user)
        return await page(request, user, message=f"Breaker {key!r} reset to closed by {_username(user)}.")

    return app

"""An OAuth2 authorization server (RFC 6749) and a protected API (RFC 6750) for the demo.

``POST /oauth/token`` (form-encoded):

- ``grant_type=client_credentials`` (§4.4), optional ``scope`` (space-separated; default: all the
  client's scopes) and ``audience``; no refresh token is issued (§4.4.3);
- ``grant_type=refresh_token&refresh_token=...`` (§6) with **rotation**: the used refresh token is
  invalidated and a new one returned; a used, revoked or unknown one is ``invalid_grant``.

The client authenticates with HTTP Basic (``client_secret_basic``) or ``client_id`` and
``client_secret`` in the body (``client_secret_post``), not both. Answers (§5.1): ``access_token``,
``token_type: Bearer``, ``expires_in``, ``scope`` (+ ``refresh_token``), with ``Cache-Control:
no-store``. Errors (§5.2) are JSON ``{"error", "error_description"}``: ``invalid_client`` (401,
with ``WWW-Authenticate: Basic`` when Basic was tried), ``invalid_request``, ``invalid_grant``,
``invalid_scope``, ``unauthorized_client``, ``unsupported_grant_type`` (400). The token endpoint has
its own limit (``token_rate_limit`` requests per ``token_rate_window`` seconds, all clients
together): beyond it, 429 ``{"error": "rate_limited"}`` with ``Retry-After``.

``ANY /oauth/api/<path>`` echoes the request and the token's client and scope when it carries
``Authorization: Bearer <valid token>``; GET/HEAD need scope ``read``, other methods ``write``
(else 403 ``insufficient_scope``). A GET's answer has an ``ETag`` (of the body: per path and
client), answered **304** to a matching ``If-None-Match``; ``?max_age=N`` adds ``Cache-Control:
private, max-age=N`` (for this client only, as such APIs mark per-user answers). No credentials: 401 ``WWW-Authenticate: Bearer realm="demo"``
(RFC 6750 §3.1: no error code); an unknown, expired or revoked token: 401 with
``error="invalid_token"``. The counts ``api_ok`` and ``api_not_modified`` (304s) are per client
too (``api_ok.<client>``).

Admin: ``GET /admin/oauth`` (token-request counts by grant and outcome, tokens issued, protected
calls and their 401s), ``POST /admin/oauth/expire`` and ``/admin/oauth/revoke`` (``{"access_token"?,
"refresh_token"?, "client_id"?}``: the matching tokens, or all), ``POST /admin/oauth/settings``
(``access_token_ttl``, ``token_rate_limit``, ``token_rate_window``), ``POST /admin/oauth/clients``
(``{"client_id", "client_secret", "scopes"}``) and ``POST /admin/oauth/refresh_tokens``
(``{"client_id", "scope"?}``: a refresh token, as a consent flow done once by a person would give).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

from demo_services.common import GET, POST, ServiceError, json_object, query_int
from demo_services.reference import matches
from demo_services.routing import Request, Response, Route
from demo_services.state import DemoState

REALM = "demo"
DEFAULT_CLIENTS: dict[str, tuple[str, frozenset[str]]] = {
    "demo-client": ("demo-secret", frozenset({"read", "write"})),
    "reader-client": ("reader-secret", frozenset({"read"})),
}
DEFAULT_TTL = 3600
DEFAULT_TOKEN_RATE_LIMIT = 20
DEFAULT_TOKEN_RATE_WINDOW = 1.0
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OAuthError(ServiceError):
    """An RFC 6749 §5.2 error: ``{"error": code, "error_description": ...}``."""

    def __init__(
        self, status: int, code: str, description: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status, code, description)
        self.headers = headers or {}

    def response(self) -> Response:
        body = {"error": self.message, "error_description": self.detail}
        return Response(self.status, body, {**_NO_STORE, **self.headers})


@dataclass
class Token:
    """An access or refresh token and what it grants."""

    value: str
    kind: str  # "access" | "refresh"
    client_id: str
    scopes: frozenset[str]
    expires_at: float | None  # None: never (refresh tokens)
    audience: str | None = None
    revoked: bool = False

    def valid(self, now: float) -> bool:
        return not self.revoked and (self.expires_at is None or now < self.expires_at)


@dataclass
class Settings:
    access_token_ttl: float = DEFAULT_TTL
    token_rate_limit: int = DEFAULT_TOKEN_RATE_LIMIT
    token_rate_window: float = DEFAULT_TOKEN_RATE_WINDOW


@dataclass
class AuthServer:
    """Clients, tokens, settings and counters of one server, behind one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    clients: dict[str, tuple[str, frozenset[str]]] = field(default_factory=lambda: dict(DEFAULT_CLIENTS))
    tokens: dict[str, Token] = field(default_factory=dict)
    settings: Settings = field(default_factory=Settings)
    counts: Counter[str] = field(default_factory=Counter)
    recent: deque[float] = field(default_factory=deque)

    def reset(self) -> None:
        with self.lock:
            self.clients = dict(DEFAULT_CLIENTS)
            self.tokens.clear()
            self.settings = Settings()
            self.counts.clear()
            self.recent.clear()

    def issue(
        self, kind: str, client_id: str, scopes: frozenset[str], ttl: float | None, audience: str | None
    ) -> Token:
        prefix = "at" if kind == "access" else "rt"
        expires_at = None if ttl is None else time.time() + ttl
        token = Token(f"{prefix}_{secrets.token_urlsafe(24)}", kind, client_id, scopes, expires_at, audience)
        self.tokens[token.value] = token
        self.counts[f"issued_{kind}"] += 1
        return token

    def admit_token_request(self, now: float) -> float | None:
        """Count one token request in the endpoint's window; seconds to wait when over the limit."""
        window, limit = self.settings.token_rate_window, self.settings.token_rate_limit
        while self.recent and self.recent[0] <= now - window:
            self.recent.popleft()
        if len(self.recent) >= limit:
            return max(self.recent[0] + window - now, 0.0)
        self.recent.append(now)
        return None


def server_of(state: DemoState) -> AuthServer:
    return state.extension(AuthServer)


def _form(request: Request) -> dict[str, str]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise OAuthError(
            400, "invalid_request", "the token request must be application/x-www-form-urlencoded"
        )
    pairs = parse_qsl(request.body.decode("utf-8", errors="replace"), keep_blank_values=True)
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise OAuthError(400, "invalid_request", f"parameter {name!r} is repeated")
        form[name] = value
    return form


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise _invalid_client("malformed Basic credentials", basic=True) from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise _invalid_client("malformed Basic credentials", basic=True)
    return unquote(client_id.replace("+", " ")), unquote(secret.replace("+", " "))  # RFC 6749 §2.3.1


def _invalid_client(description: str, basic: bool) -> OAuthError:
    headers = {"WWW-Authenticate": f'Basic realm="{REALM}"'} if basic else {}
    return OAuthError(401, "invalid_client", description, headers)


def _authenticate(request: Request, form: dict[str, str], auth: AuthServer) -> str:
    basic = _basic_credentials(request)
    posted = "client_secret" in form
    if basic is not None and posted:
        raise OAuthError(
            400, "invalid_request", "use one client authentication method, not Basic and the body"
        )
    if basic is not None:
        client_id, secret = basic
    elif posted:
        client_id, secret = form.get("client_id", ""), form["client_secret"]
    else:
        raise _invalid_client("client authentication is required", basic=False)
    known = auth.clients.get(client_id)
    if known is None or not secrets.compare_digest(known[0], secret):
        raise _invalid_client("unknown client or wrong secret", basic=basic is not None)
    return client_id


def _scopes(form: dict[str, str], allowed: frozenset[str]) -> frozenset[str]:
    requested = frozenset(form.get("scope", "").split())
    if not requested:
        return allowed
    extra = requested - allowed
    if extra:
        raise OAuthError(
            400, "invalid_scope", f"scope {' '.join(sorted(extra))!r} is not granted to this client"
        )
    return requested


def _token_answer(access: Token, ttl: float, refresh: Token | None) -> Response:
    body: dict[str, Any] = {
        "access_token": access.value,
        "token_type": "Bearer",
        "expires_in": int(ttl),
        "scope": " ".join(sorted(access.scopes)),
    }
    if refresh is not None:
        body["refresh_token"] = refresh.value
    return Response(200, body, dict(_NO_STORE))


def token(request: Request, state: DemoState) -> Response:
    """``POST /oauth/token``: see the module docstring."""
    auth = server_of(state)
    with auth.lock:
        auth.counts["token_requests"] += 1
        wait = auth.admit_token_request(time.time())
        if wait is not None:
            auth.counts["rate_limited"] += 1
            body = {"error": "rate_limited", "error_description": "too many token requests"}
            return Response(429, body, {**_NO_STORE, "Retry-After": str(max(1, round(wait + 0.5)))})
        try:
            response = _grant(request, auth)
        except OAuthError as exc:
            auth.counts[f"error_{exc.message}"] += 1
            raise
        auth.counts["granted"] += 1
        return response


def _grant(request: Request, auth: AuthServer) -> Response:
    form = _form(request)
    grant_type = form.get("grant_type")
    if not grant_type:
        raise OAuthError(400, "invalid_request", "grant_type is required")
    auth.counts[f"grant_{grant_type}"] += 1
    client_id = _authenticate(request, form, auth)
    allowed = auth.clients[client_id][1]
    ttl = auth.settings.access_token_ttl
    if grant_type == "client_credentials":
        scopes = _scopes(form, allowed)
        access = auth.issue("access", client_id, scopes, ttl, form.get("audience") or None)
        return _token_answer(access, ttl, None)
    if grant_type == "refresh_token":
        value = form.get("refresh_token")
        if not value:
            raise OAuthError(400, "invalid_request", "refresh_token is required")
        old = auth.tokens.get(value)
        if old is None or old.kind != "refresh" or old.client_id != client_id or not old.valid(time.time()):
            raise OAuthError(
                400, "invalid_grant", "the refresh token is invalid, expired, revoked or already used"
            )
        scopes = _scopes(form, old.scopes)
        old.revoked = True  # rotation: a refresh token works once
        access = auth.issue("access", client_id, scopes, ttl, old.audience)
        refresh = auth.issue("refresh", client_id, old.scopes, None, old.audience)
        return _token_answer(access, ttl, refresh)
    raise OAuthError(400, "unsupported_grant_type", f"grant_type {grant_type!r} is not supported")


def _bearer_challenge(error: str | None, description: str) -> dict[str, str]:
    if error is None:
        return {"WWW-Authenticate": f'Bearer realm="{REALM}"'}
    return {"WWW-Authenticate": f'Bearer realm="{REALM}", error="{error}", error_description="{description}"'}


def protected(request: Request, state: DemoState) -> Response:
    """``ANY /oauth/api/<path>``: echo for a valid bearer token, RFC 6750 challenges otherwise."""
    auth = server_of(state)
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    with auth.lock:
        auth.counts["api_calls"] += 1
        if scheme.lower() != "bearer" or not value.strip():
            auth.counts["api_unauthorized"] += 1
            body = {"error": "unauthorized", "detail": "an Authorization: Bearer token is required"}
            return Response(401, body, _bearer_challenge(None, ""))
        found = auth.tokens.get(value.strip())
        if found is None or found.kind != "access" or not found.valid(time.time()):
            auth.counts["api_invalid_token"] += 1
            description = (
                "The access token expired" if found and not found.revoked else "The access token is invalid"
            )
            body = {"error": "invalid_token", "detail": description}
            return Response(401, body, _bearer_challenge("invalid_token", description))
        needed = "read" if request.method in ("GET", "HEAD") else "write"
        if needed not in found.scopes:
            auth.counts["api_insufficient_scope"] += 1
            description = f"this request needs scope {needed!r}"
            headers = _bearer_challenge("insufficient_scope", description)
            headers["WWW-Authenticate"] += f', scope="{needed}"'
            return Response(403, {"error": "insufficient_scope", "detail": description}, headers)
        client_id, scopes = found.client_id, sorted(found.scopes)
        body = {
            "path": request.path,
            "method": request.method,
            "client_id": client_id,
            "scope": " ".join(scopes),
        }
        headers: dict[str, str] = {}
        if request.method == "GET":
            digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
            headers["ETag"] = f'"{digest}"'
            if "max_age" in request.query:
                headers["Cache-Control"] = f"private, max-age={query_int(request, 'max_age', 60, 0, 86400)}"
            if matches(request.headers.get("if-none-match", ""), headers["ETag"]):
                auth.counts["api_not_modified"] += 1
                auth.counts[f"api_not_modified.{client_id}"] += 1
                return Response(304, None, headers)
        auth.counts["api_ok"] += 1
        auth.counts[f"api_ok.{client_id}"] += 1
    return Response(200, body, headers)


# --- admin ----------------------------------------------------------------------------------


def admin_oauth(request: Request, state: DemoState) -> Response:
    """``GET /admin/oauth``: counters and live tokens per kind."""
    auth = server_of(state)
    now = time.time()
    with auth.lock:
        live = Counter(t.kind for t in auth.tokens.values() if t.valid(now))
        return Response(
            200,
            {
                "counts": dict(auth.counts),
                "token_requests": auth.counts["token_requests"],
                "live_tokens": {"access": live["access"], "refresh": live["refresh"]},
                "settings": vars(auth.settings),
            },
        )


def _select(auth: AuthServer, body: dict[str, Any]) -> list[Token]:
    picks = {name: body.get(name) for name in ("access_token", "refresh_token", "client_id")}
    for name, value in picks.items():
        if value is not None and not isinstance(value, str):
            raise ServiceError(400, "invalid_field", f"{name!r} must be a string", field=name)
    values = {v for v in (picks["access_token"], picks["refresh_token"]) if v}
    chosen = []
    for token_ in auth.tokens.values():
        if values and token_.value not in values:
            continue
        if picks["client_id"] and token_.client_id != picks["client_id"]:
            continue
        chosen.append(token_)
    return chosen


def admin_expire(request: Request, state: DemoState) -> Response:
    """``POST /admin/oauth/expire``: the matching access tokens expire now."""
    auth = server_of(state)
    body = json_object(request)
    with auth.lock:
        chosen = [t for t in _select(auth, body) if t.kind == "access"]
        for token_ in chosen:
            token_.expires_at = time.time() - 1
    return Response(200, {"expired": len(chosen)})


def admin_revoke(request: Request, state: DemoState) -> Response:
    """``POST /admin/oauth/revoke``: the matching access and refresh tokens are revoked."""
    auth = server_of(state)
    body = json_object(request)
    with auth.lock:
        chosen = _select(auth, body)
        for token_ in chosen:
            token_.revoked = True
    return Response(200, {"revoked": len(chosen)})


def _number(body: dict[str, Any], name: str, low: float, integer: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < low:
        kind = "an integer" if integer else "a number"
        raise ServiceError(400, "invalid_field", f"{name!r} must be {kind} >= {low}", field=name)
    return value


def admin_settings(request: Request, state: DemoState) -> Response:
    """``POST /admin/oauth/settings``: token lifetime and the token endpoint's limit."""
    body = json_object(request)
    allowed = {"access_token_ttl", "token_rate_limit", "token_rate_window"}
    for name in body:
        if name not in allowed:
            raise ServiceError(
                400, "invalid_field", f"unknown field {name!r}; allowed: {sorted(allowed)}", field=name
            )
    ttl = _number(body, "access_token_ttl", 0.001)
    limit = _number(body, "token_rate_limit", 1, integer=True)
    window = _number(body, "token_rate_window", 0.001)
    auth = server_of(state)
    with auth.lock:
        if ttl is not None:
            auth.settings.access_token_ttl = ttl
        if limit is not None:
            auth.settings.token_rate_limit = int(limit)
        if window is not None:
            auth.settings.token_rate_window = window
        return Response(200, {"settings": vars(auth.settings)})


def admin_clients(request: Request, state: DemoState) -> Response:
    """``POST /admin/oauth/clients``: register (or replace) a client."""
    body = json_object(request)
    client_id, secret, scopes = body.get("client_id"), body.get("client_secret"), body.get("scopes", ["read"])
    for name, value in (("client_id", client_id), ("client_secret", secret)):
        if not isinstance(value, str) or not value:
            raise ServiceError(400, "invalid_field", f"{name!r} must be a non-empty string", field=name)
    if not isinstance(scopes, list) or not all(isinstance(s, str) and s for s in scopes):
        raise ServiceError(400, "invalid_field", "'scopes' must be a list of strings", field="scopes")
    auth = server_of(state)
    with auth.lock:
        auth.clients[client_id] = (secret, frozenset(scopes))  # type: ignore[index]
    return Response(201, {"client_id": client_id, "scopes": sorted(scopes)})


def admin_refresh_tokens(request: Request, state: DemoState) -> Response:
    """``POST /admin/oauth/refresh_tokens``: a refresh token for a client (what a consent flow yields)."""
    body = json_object(request)
    auth = server_of(state)
    client_id = body.get("client_id")
    with auth.lock:
        if not isinstance(client_id, str) or client_id not in auth.clients:
            raise ServiceError(400, "invalid_field", f"unknown client {client_id!r}", field="client_id")
        allowed = auth.clients[client_id][1]
        scope = body.get("scope")
        scopes = frozenset(scope.split()) if isinstance(scope, str) and scope.strip() else allowed
        if not scopes <= allowed:
            raise ServiceError(
                400, "invalid_field", f"scope beyond the client's {sorted(allowed)}", field="scope"
            )
        refresh = auth.issue("refresh", client_id, scopes, None, None)
    return Response(
        201, {"refresh_token": refresh.value, "client_id": client_id, "scope": " ".join(sorted(scopes))}
    )


ROUTES: tuple[Route, ...] = (
    Route("/oauth/token", token, POST),
    Route("/oauth/api/<rest:path>", protected),
)
ADMIN_ROUTES: tuple[Route, ...] = (
    Route("/admin/oauth", admin_oauth, GET, record=False),
    Route("/admin/oauth/expire", admin_expire, POST, record=False),
    Route("/admin/oauth/revoke", admin_revoke, POST, record=False),
    Route("/admin/oauth/settings", admin_settings, POST, record=False),
    Route("/admin/oauth/clients", admin_clients, POST, record=False),
    Route("/admin/oauth/refresh_tokens", admin_refresh_tokens, POST, record=False),
)

"""OAuth2 client credentials and refresh tokens (RFC 6749): the client's configuration, read from an
Airflow Connection, and one token request over a given ``requests.Session``.

**Where the configuration lives.** A connection of its own for the authorization server (any
``conn_type``; ``generic`` or ``http``), named by the API call (``oauth2_conn_id``), never the API's
connection: providers-http's ``HttpHook`` sends every unknown extra of the API connection as an
HTTP header and its login/password as Basic auth, which would hand the client secret to the API.

| field | holds |
|---|---|
| ``login`` | the client id (required) |
| ``password`` | the client secret (required) |
| ``host`` | the token URL, ``https://login.example.com/oauth2/token`` (or ``extra.token_url``) |
| ``extra.token_url`` | the token URL, when ``host`` is not one |
| ``extra.scopes`` | a list of scopes, or one space-separated string (optional) |
| ``extra.audience`` | sent as ``audience`` (Auth0, Okta; optional) |
| ``extra.token_params`` | an object of further form parameters (``resource`` for Azure AD v1, ...) |
| ``extra.auth_method`` | ``client_secret_basic`` (default) or ``client_secret_post`` |
| ``extra.grant_type`` | ``client_credentials`` (default) or ``refresh_token`` |
| ``extra.refresh_token`` | the first refresh token (``grant_type: refresh_token``); rotated ones are kept by the caller |
| ``extra.refresh_margin_seconds`` | refresh this long before expiry (default 60) |
| ``extra.timeout`` | seconds for the token request (default 30) |

Errors: :class:`OAuth2ConfigError` names the connection and the field; a refused token request raises
an :class:`OAuth2TokenError` subclass per RFC 6749 §5.2 code. No error message, ``repr`` or log line
carries the secret, the refresh token or an access token.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol
from urllib.parse import quote_plus, urlsplit

import requests

from api_orchestration.errors import ApiOrchestrationError, ConfigurationError

DEFAULT_REFRESH_MARGIN = 60.0
DEFAULT_TIMEOUT = 30.0
_RESERVED_PARAMS = frozenset({"grant_type", "client_id", "client_secret", "refresh_token", "scope"})
_EXTRA_FIELDS = frozenset(
    {
        "token_url",
        "scopes",
        "audience",
        "token_params",
        "auth_method",
        "grant_type",
        "refresh_token",
        "refresh_margin_seconds",
        "timeout",
    }
)


class TokenAuthMethod(StrEnum):
    """How the client authenticates at the token endpoint (RFC 6749 §2.3.1)."""

    BASIC = "client_secret_basic"
    POST = "client_secret_post"


class GrantType(StrEnum):
    CLIENT_CREDENTIALS = "client_credentials"
    REFRESH_TOKEN = "refresh_token"


class ConnectionLike(Protocol):
    """What is read from an Airflow Connection (``airflow.sdk.Connection`` has it)."""

    conn_id: str
    host: str | None
    login: str | None
    password: str | None

    @property
    def extra_dejson(self) -> dict[str, Any]: ...


# --- errors -------------------------------------------------------------------------------------


class OAuth2ConfigError(ConfigurationError):
    """An OAuth2 connection is misconfigured; names the connection, the field and the fix (never a secret)."""

    def __init__(self, conn_id: str, field_name: str, problem: str) -> None:
        self.owner, self.param, self.value, self.expected, self.step = (
            f"connection {conn_id!r}",
            field_name,
            None,
            problem,
            None,
        )
        self.conn_id, self.field = conn_id, field_name
        ApiOrchestrationError.__init__(self, f"OAuth2 connection {conn_id!r}: {field_name} {problem}")


class OAuth2TokenError(ApiOrchestrationError):
    """The token endpoint refused or failed a token request.

    ``error`` is the RFC 6749 §5.2 code (or ``http_<status>``/``transport`` when the answer was not
    one), ``retryable`` says whether the same request may succeed later (429, 5xx, transport), and
    ``retry_after`` is the server's ``Retry-After`` in seconds, if any."""

    def __init__(
        self,
        conn_id: str,
        error: str,
        description: str | None,
        status: int | None,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        self.conn_id, self.error, self.description, self.status = conn_id, error, description, status
        self.retryable, self.retry_after = retryable, retry_after
        answered = f"answered {status} " if status is not None else ""
        detail = f": {description}" if description else ""
        super().__init__(f"OAuth2 token request for connection {conn_id!r} {answered}{error}{detail}")


class InvalidClientError(OAuth2TokenError):
    """``invalid_client``: unknown client, wrong secret or unsupported authentication method."""


class InvalidGrantError(OAuth2TokenError):
    """``invalid_grant``: the refresh token is invalid, expired, revoked or already used."""


class InvalidScopeError(OAuth2TokenError):
    """``invalid_scope``: a requested scope is unknown or beyond what the client may have."""


class UnauthorizedClientError(OAuth2TokenError):
    """``unauthorized_client``: the client may not use this grant type."""


class UnsupportedGrantTypeError(OAuth2TokenError):
    """``unsupported_grant_type``."""


class InvalidRequestError(OAuth2TokenError):
    """``invalid_request``: a parameter is missing, repeated or malformed."""


class TokenEndpointError(OAuth2TokenError):
    """The endpoint did not answer per RFC 6749: a transport error, 429, 5xx or a malformed body."""


_ERRORS: dict[str, type[OAuth2TokenError]] = {
    "invalid_client": InvalidClientError,
    "invalid_grant": InvalidGrantError,
    "invalid_scope": InvalidScopeError,
    "unauthorized_client": UnauthorizedClientError,
    "unsupported_grant_type": UnsupportedGrantTypeError,
    "invalid_request": InvalidRequestError,
}


# --- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class OAuth2ClientConfig:
    """One OAuth2 client, validated. Secrets are kept out of ``repr``."""

    conn_id: str
    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    scopes: tuple[str, ...] = ()
    audience: str | None = None
    token_params: tuple[tuple[str, str], ...] = ()
    auth_method: TokenAuthMethod = TokenAuthMethod.BASIC
    grant_type: GrantType = GrantType.CLIENT_CREDENTIALS
    refresh_token: str | None = field(default=None, repr=False)
    refresh_margin_seconds: float = DEFAULT_REFRESH_MARGIN
    timeout: float = DEFAULT_TIMEOUT

    @property
    def secrets(self) -> tuple[str, ...]:
        """The values that must never appear in a message."""
        return tuple(s for s in (self.client_secret, self.refresh_token) if s)


def _url(conn_id: str, field_name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise OAuth2ConfigError(
            conn_id,
            field_name,
            "must be the token endpoint's URL, e.g. https://login.example.com/oauth2/token",
        )
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise OAuth2ConfigError(
            conn_id,
            field_name,
            f"must be an absolute http(s) URL such as https://login.example.com/oauth2/token, got {value!r}",
        )
    return value.strip()


def _text(conn_id: str, field_name: str, value: Any, *, required: bool, secret: bool = False) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            where = (
                "the connection's password" if field_name == "password" else f"the connection's {field_name}"
            )
            raise OAuth2ConfigError(conn_id, field_name, f"is required: set {where}")
        return None
    if not isinstance(value, str):
        shown = "" if secret else f", got {type(value).__name__}"
        raise OAuth2ConfigError(conn_id, field_name, f"must be a string{shown}")
    return value if secret else value.strip()


def _scopes(conn_id: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list | tuple) and all(
        isinstance(s, str) and s.strip() and " " not in s.strip() for s in value
    ):
        return tuple(s.strip() for s in value)
    raise OAuth2ConfigError(
        conn_id,
        "extra.scopes",
        f"must be a list of scope strings or one space-separated string, got {value!r}",
    )


def _params(conn_id: str, value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise OAuth2ConfigError(
            conn_id, "extra.token_params", f"must be an object of form parameters, got {type(value).__name__}"
        )
    params = []
    for name, item in value.items():
        if name in _RESERVED_PARAMS:
            raise OAuth2ConfigError(
                conn_id,
                f"extra.token_params.{name}",
                "is set by the client itself: use login/password, extra.scopes or extra.refresh_token",
            )
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise OAuth2ConfigError(conn_id, f"extra.token_params.{name}", "must be a string or a number")
        params.append((str(name), str(item)))
    return tuple(params)


def _choice(conn_id: str, field_name: str, value: Any, kind: type[StrEnum], default: StrEnum) -> Any:
    if value is None:
        return default
    try:
        return kind(value)
    except ValueError:
        options = ", ".join(m.value for m in kind)
        raise OAuth2ConfigError(conn_id, field_name, f"must be one of {options}, got {value!r}") from None


def _positive(
    conn_id: str, field_name: str, value: Any, default: float, *, allow_zero: bool = False
) -> float:
    if value is None:
        return default
    ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise OAuth2ConfigError(conn_id, field_name, f"must be a number of seconds {bound}, got {value!r}")
    return float(value)


def config_from_connection(conn: ConnectionLike) -> OAuth2ClientConfig:
    """Validate an OAuth2 client connection (the table in the module docstring); raises OAuth2ConfigError."""
    conn_id = conn.conn_id
    extra = conn.extra_dejson or {}
    if not isinstance(extra, Mapping):
        raise OAuth2ConfigError(conn_id, "extra", "must be a JSON object")
    unknown = sorted(set(extra) - _EXTRA_FIELDS)
    if unknown:
        allowed = ", ".join(sorted(_EXTRA_FIELDS))
        raise OAuth2ConfigError(
            conn_id, f"extra.{unknown[0]}", f"is not an OAuth2 setting; allowed: {allowed}"
        )
    if extra.get("token_url") is not None:
        token_url = _url(conn_id, "extra.token_url", extra["token_url"])
    else:
        host = conn.host or ""
        if "://" not in host:
            raise OAuth2ConfigError(
                conn_id,
                "host",
                "must be the token URL (https://login.example.com/oauth2/token), or set extra.token_url",
            )
        token_url = _url(conn_id, "host", host)
    grant_type = _choice(
        conn_id, "extra.grant_type", extra.get("grant_type"), GrantType, GrantType.CLIENT_CREDENTIALS
    )
    refresh_token = _text(
        conn_id, "extra.refresh_token", extra.get("refresh_token"), required=False, secret=True
    )
    if grant_type is GrantType.REFRESH_TOKEN and refresh_token is None:
        raise OAuth2ConfigError(conn_id, "extra.refresh_token", "is required with grant_type refresh_token")
    audience = _text(conn_id, "extra.audience", extra.get("audience"), required=False)
    return OAuth2ClientConfig(
        conn_id=conn_id,
        token_url=token_url,
        client_id=_text(conn_id, "login", conn.login, required=True) or "",
        client_secret=_text(conn_id, "password", conn.password, required=True, secret=True) or "",
        scopes=_scopes(conn_id, extra.get("scopes")),
        audience=audience,
        token_params=_params(conn_id, extra.get("token_params")),
        auth_method=_choice(
            conn_id, "extra.auth_method", extra.get("auth_method"), TokenAuthMethod, TokenAuthMethod.BASIC
        ),
        grant_type=grant_type,
        refresh_token=refresh_token,
        refresh_margin_seconds=_positive(
            conn_id,
            "extra.refresh_margin_seconds",
            extra.get("refresh_margin_seconds"),
            DEFAULT_REFRESH_MARGIN,
            allow_zero=True,
        ),
        timeout=_positive(conn_id, "extra.timeout", extra.get("timeout"), DEFAULT_TIMEOUT),
    )


def load_config(conn_id: str) -> OAuth2ClientConfig:
    """Read connection ``conn_id`` through Airflow's secrets backends and validate it."""
    from airflow.sdk import Connection

    return config_from_connection(Connection.get(conn_id))


# --- tokens -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OAuth2Token:
    """An access token (and maybe a rotated refresh token) as the endpoint granted it (RFC 6749 §5.1)."""

    access_token: str = field(repr=False)
    token_type: str
    obtained_at: float
    expires_at: float | None  # None: the server did not say (``expires_in`` absent)
    scopes: tuple[str, ...] = ()
    refresh_token: str | None = field(default=None, repr=False)

    @property
    def authorization(self) -> str:
        """The ``Authorization`` header value."""
        return f"Bearer {self.access_token}"

    def expires_within(self, seconds: float, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at - seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "token_type": self.token_type,
            "obtained_at": self.obtained_at,
            "expires_at": self.expires_at,
            "scopes": list(self.scopes),
            "refresh_token": self.refresh_token,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OAuth2Token:
        return cls(
            access_token=str(data["access_token"]),
            token_type=str(data["token_type"]),
            obtained_at=float(data["obtained_at"]),
            expires_at=None if data.get("expires_at") is None else float(data["expires_at"]),
            scopes=tuple(data.get("scopes") or ()),
            refresh_token=data.get("refresh_token"),
        )


def token_form(config: OAuth2ClientConfig, refresh_token: str | None = None) -> dict[str, str]:
    """The form body of a token request (without client credentials for ``client_secret_basic``)."""
    grant = GrantType.REFRESH_TOKEN if refresh_token else config.grant_type
    form: dict[str, str] = {"grant_type": grant.value}
    if grant is GrantType.REFRESH_TOKEN:
        token = refresh_token or config.refresh_token
        if not token:
            raise OAuth2ConfigError(
                config.conn_id, "extra.refresh_token", "is required with grant_type refresh_token"
            )
        form["refresh_token"] = token
    elif config.scopes:
        form["scope"] = " ".join(config.scopes)
    if config.audience:
        form["audience"] = config.audience
    form.update(config.token_params)
    if config.auth_method is TokenAuthMethod.POST:
        form["client_id"] = config.client_id
        form["client_secret"] = config.client_secret
    return form


def basic_auth(config: OAuth2ClientConfig) -> tuple[str, str] | None:
    """HTTP Basic credentials for ``client_secret_basic``: id and secret form-urlencoded (RFC 6749 §2.3.1)."""
    if config.auth_method is not TokenAuthMethod.BASIC:
        return None
    return quote_plus(config.client_id), quote_plus(config.client_secret)


def _redact(text: str | None, secrets: tuple[str, ...]) -> str | None:
    if text is None:
        return None
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, "***")
    return text[:500]


def _retry_after(value: str | None) -> float | None:
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


def parse_token_response(
    config: OAuth2ClientConfig,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    used_refresh_token: str | None = None,
) -> OAuth2Token:
    """The token from a token endpoint's answer, or the matching OAuth2TokenError (secrets redacted)."""
    secrets = (*config.secrets, *((used_refresh_token,) if used_refresh_token else ()))
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        data = json.loads(body) if body.strip() else None
    except ValueError:
        data = None
    if status != 200:
        retryable = status == 429 or status >= 500
        retry_after = _retry_after(lower.get("retry-after"))
        if isinstance(data, dict) and isinstance(data.get("error"), str) and not retryable:
            code = data["error"]
            description = (
                data.get("error_description") if isinstance(data.get("error_description"), str) else None
            )
            kind = _ERRORS.get(code, OAuth2TokenError)
            raise kind(config.conn_id, _redact(code, secrets) or "", _redact(description, secrets), status)
        raise TokenEndpointError(
            config.conn_id,
            f"http_{status}",
            "the token endpoint did not grant a token",
            status,
            retryable=retryable,
            retry_after=retry_after,
        )
    if not isinstance(data, dict):
        raise TokenEndpointError(
            config.conn_id, "malformed_response", "the 200 answer is not a JSON object", status
        )
    access_token = data.get("access_token")
    token_type = data.get("token_type")
    if not isinstance(access_token, str) or not access_token:
        raise TokenEndpointError(
            config.conn_id, "malformed_response", "the answer has no access_token", status
        )
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        shown = token_type if isinstance(token_type, str) else type(token_type).__name__
        raise TokenEndpointError(
            config.conn_id, "unsupported_token_type", f"token_type {shown!r} is not Bearer", status
        )
    expires_in = data.get("expires_in")
    expires_at = None
    if expires_in is not None:
        seconds = _retry_after(str(expires_in))  # a number, or a numeric string (some servers send "3599")
        if seconds is None:
            raise TokenEndpointError(
                config.conn_id, "malformed_response", "expires_in is not a number of seconds", status
            )
        expires_at = now + seconds
    scope = data.get("scope")
    scopes = tuple(scope.split()) if isinstance(scope, str) else config.scopes  # absent: as requested (§5.1)
    refresh = data.get("refresh_token") if isinstance(data.get("refresh_token"), str) else None
    return OAuth2Token(access_token, "Bearer", now, expires_at, scopes, refresh)


def request_token(
    session: requests.Session,
    config: OAuth2ClientConfig,
    *,
    refresh_token: str | None = None,
    now: float | None = None,
) -> OAuth2Token:
    """POST one token request with ``session`` and parse the answer.

    ``refresh_token`` (else the configured grant) selects the refresh-token grant; a rotated refresh
    token comes back in :attr:`OAuth2Token.refresh_token` and must replace the used one."""
    form = token_form(config, refresh_token)
    secrets = (*config.secrets, *((refresh_token,) if refresh_token else ()))
    sent = (
        time.time() if now is None else now
    )  # expiry counts from the request: never later than the server's
    try:
        response = session.post(
            config.token_url,
            data=form,
            auth=basic_auth(config),
            headers={"Accept": "application/json"},
            timeout=config.timeout,
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        description = _redact(f"{type(exc).__name__}: {exc}", secrets)
        raise TokenEndpointError(config.conn_id, "transport", description, None, retryable=True) from None
    return parse_token_response(
        config,
        response.status_code,
        response.headers,
        response.content,
        now=sent,
        used_refresh_token=refresh_token,
    )

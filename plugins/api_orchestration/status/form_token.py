"""Form tokens of the status page: signed, short-lived, bound to one user and one action.

The page's buttons post one of these instead of an Airflow API token. It proves that the user who
loaded the page (authenticated by Airflow) pressed the button, and it can do nothing else: Airflow's
REST API refuses it (it is not a JWT and is not signed with Airflow's JWT key), and the status app
accepts it only for the action it names (``view``: refresh the page; ``reset``: reset one breaker,
named in the token), for ``FORM_TOKEN_SECONDS``. Permissions are checked again when it is used.

Format: ``apiorch-form:<payload>:<signature>``, the payload base64url JSON ``{"user": <the auth
manager's serialize_user()>, "action", "key", "exp"}``, the signature an HMAC-SHA256 of the payload
under a key derived from Airflow's ``[api] secret_key`` (the same on every api-server).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from enum import StrEnum
from typing import Any

from fastapi import HTTPException, status

PREFIX = "apiorch-form"
FORM_TOKEN_SECONDS = 300  # a reset within 5 minutes of loading the page; Refresh mints new ones
_PURPOSE = b"api-orchestration status page form token v1"


class FormAction(StrEnum):
    """What a form token allows."""

    VIEW = "view"  # re-render the page (the Refresh button)
    RESET = "reset"  # reset the breaker named in the token


def _signing_key() -> bytes:
    from airflow.configuration import conf

    secret = conf.get("api", "secret_key", fallback="") or conf.get("api_auth", "jwt_secret", fallback="")
    if not secret:
        raise RuntimeError("[api] secret_key is not set: the status page cannot sign its forms")
    return hmac.new(secret.encode(), _PURPOSE, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(payload: str) -> str:
    return _b64(hmac.new(_signing_key(), payload.encode(), hashlib.sha256).digest())


def mint(
    user: Any,
    action: FormAction,
    key: str = "",
    *,
    seconds: float = FORM_TOKEN_SECONDS,
    now: float | None = None,
) -> str:
    """A form token for ``user`` (an auth-manager user) allowing ``action`` (on breaker ``key``)."""
    from airflow.api_fastapi.app import get_auth_manager

    claims = {
        "user": get_auth_manager().serialize_user(user),
        "action": str(action),
        "key": key,
        "exp": (time.time() if now is None else now) + seconds,
    }
    payload = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    return f"{PREFIX}:{payload}:{_sign(payload)}"


def verify(token: Any, action: FormAction, key: str = "") -> Any:
    """The user a valid token for ``action`` (on ``key``) was minted for.

    401 if missing or expired (load the page again), 403 if forged, altered or for another action.
    """
    if not isinstance(token, str) or not token:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Not authenticated: no form token")
    prefix, _, rest = token.partition(":")
    payload, _, signature = rest.partition(":")
    if (
        prefix != PREFIX
        or not payload
        or not hmac.compare_digest(signature.encode(), _sign(payload).encode())
    ):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Forbidden: invalid form token")
    claims = json.loads(_unb64(payload))
    if claims.get("action") != str(action) or claims.get("key", "") != key:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Forbidden: this form token is for another action")
    if float(claims.get("exp", 0)) < time.time():
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Form expired: load the page again")
    from airflow.api_fastapi.app import get_auth_manager

    try:
        return get_auth_manager().deserialize_user(claims["user"])
    except (KeyError, ValueError, TypeError) as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Forbidden: unknown user in form token") from exc

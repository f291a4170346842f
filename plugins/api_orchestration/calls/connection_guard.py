"""The guard of calls on one Airflow connection, built once for every caller: the operators (single
call, bulk, sync) and the guarded clients of ``@task.resilient_http`` (:mod:`.session`,
:mod:`.async_session`). The DAG's own policies win over the connection's
(:func:`~api_orchestration.connections.connection_policies`), keys default to the connection id,
and an OAuth2 connection's tokens are shared through the state store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from api_orchestration.calls.guard import Guard
from api_orchestration.calls.oauth2 import load_config
from api_orchestration.calls.tokens import SharedTokens, shared_tokens
from api_orchestration.connections import connection_policies
from api_orchestration.errors import ConfigurationError
from api_orchestration.policy import BreakerPolicy, CachePolicy, RateLimit, RetryPolicy
from api_orchestration.redaction import register_secrets
from api_orchestration.state import get_backend


def check_oauth2_conn_id(owner: str, oauth2_conn_id: Any, auth_type: Any = None) -> None:
    """Refuse an ``oauth2_conn_id`` that is not a connection id, or one given with ``auth_type``."""
    if oauth2_conn_id is not None and (not isinstance(oauth2_conn_id, str) or not oauth2_conn_id.strip()):
        raise ConfigurationError(
            owner, "oauth2_conn_id", oauth2_conn_id, "must be the id of an OAuth2 client connection, or None"
        )
    if oauth2_conn_id and auth_type is not None:
        raise ConfigurationError(
            owner,
            "auth_type",
            auth_type,
            "must not be set with oauth2_conn_id: the token is the authorization",
        )


def oauth2_tokens(conn_id: str | None, backend: Any) -> SharedTokens | None:
    """The shared tokens of OAuth2 connection ``conn_id`` (None: no OAuth2); its secrets masked."""
    if not conn_id:
        return None
    config = load_config(conn_id)
    register_secrets(config.secrets)
    return shared_tokens(config, backend)


def connection_guard(
    conn_id: str,
    *,
    state_url: str | None,
    rate_limit: RateLimit | Sequence[RateLimit] | None,
    breaker: BreakerPolicy | None,
    retry: RetryPolicy | None,
    oauth2_conn_id: str | None,
    limit_key: str | None = None,
    breaker_key: str | None = None,
    cache: CachePolicy | None = None,
    method: str = "GET",
    cacheable: bool = True,
    **options: Any,
) -> Guard:
    """The guard of calls on connection ``conn_id``: the DAG's own policies win over the
    connection's, keys default to the connection id, OAuth2 tokens are shared through the store.
    ``cacheable=False`` (pages, guarded clients): no response cache, whatever the connection says.
    ``options``: the other :class:`Guard` fields (``max_sleep``, ``max_in_flight``, ``listeners``, ...)."""
    policies = connection_policies(conn_id).under(
        rate_limit=rate_limit, breaker=breaker, retry=retry, cache=cache, oauth2_conn_id=oauth2_conn_id,
        method=method,
    )  # fmt: skip
    backend = get_backend(state_url)
    return Guard(
        backend=backend, tokens=oauth2_tokens(policies.oauth2_conn_id, backend),
        limit_key=limit_key or conn_id, rate_limit=policies.rate_limit,
        breaker_key=breaker_key or conn_id, breaker=policies.breaker, retry=policies.retry or RetryPolicy(),
        cache=policies.cache if cacheable else None, **options,
    )  # fmt: skip

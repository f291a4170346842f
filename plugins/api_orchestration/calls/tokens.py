"""One OAuth2 access token per connection, shared by every worker through the state store.

:class:`SharedTokens` gives a call its ``Authorization`` header. The token lives in the store
(``StateBackend.token_lease``): N callers that need one at once cause one token request (the one
holding the single-flight lease fetches, the others wait and read), it is refreshed ``margin``
seconds before it expires, and a rotated refresh token is kept with it. A process keeps the token it
read until the margin (no store round trip per call); a caller whose request was refused with 401
asks again *rejecting* that token, which makes one caller fetch a new one and the others read it.

The token endpoint has its own limiter and breaker key, ``<conn_id>:token``. Tokens are registered
with Airflow's secrets masker as soon as they are read; errors never carry them (see
:mod:`.oauth2`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

import requests

from api_orchestration.calls.oauth2 import (
    GrantType,
    OAuth2ClientConfig,
    OAuth2Token,
    OAuth2TokenError,
    TokenEndpointError,
    request_token,
)
from api_orchestration.errors import CircuitOpenError
from api_orchestration.policy import BreakerPolicy, RateLimit
from api_orchestration.resilience.admission import AdmissionRequest, Verdict
from api_orchestration.resilience.tokens import WAIT_STEP, TokenDecisionKind
from api_orchestration.state.base import StateBackend

logger = logging.getLogger(__name__)
TOKEN_RATE_LIMIT = RateLimit(5, 1.0)  # the token endpoint's own limit (shared by every worker)
REFUSED_SECONDS = 30.0  # a refused grant (invalid_client, ...) is raised again this long without a request
TOKEN_BREAKER = BreakerPolicy(failure_rate=0.5, window_size=10, min_calls=4, open_seconds=30.0)


@dataclass(frozen=True)
class Authorization:
    """What a call sends (``header``: the ``Authorization`` value) and the token's ``fingerprint``
    (to reject it after a 401). ``repr`` never shows the header."""

    header: str
    fingerprint: str

    def __repr__(self) -> str:
        return f"Authorization(fingerprint={self.fingerprint!r})"


def fingerprint(access_token: str) -> str:
    return hashlib.sha256(access_token.encode()).hexdigest()[:16]


def _register(token: OAuth2Token) -> None:
    """Mask the tokens in every log line and rendered field from now on."""
    from api_orchestration.redaction import register_secrets

    register_secrets([t for t in (token.access_token, token.authorization, token.refresh_token) if t])


class SharedTokens:
    """The tokens of one OAuth2 connection for this process (thread-safe), shared through ``backend``."""

    def __init__(
        self,
        config: OAuth2ClientConfig,
        backend: StateBackend,
        *,
        session: Callable[[], requests.Session] = requests.Session,
        token_limit: RateLimit | None = TOKEN_RATE_LIMIT,
        token_breaker: BreakerPolicy | None = TOKEN_BREAKER,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config, self.backend, self.clock = config, backend, clock
        self.name = config.conn_id
        self.token_key = f"{config.conn_id}:token"
        self._session, self._lock = session, threading.Lock()
        self._holder = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._request = AdmissionRequest(
            self.token_key, token_limit, self.token_key if token_breaker else None, token_breaker,
            max_wait=config.timeout, lease_seconds=config.timeout + 30.0,
        )  # fmt: skip
        self._local: OAuth2Token | None = None
        self._refused: tuple[OAuth2TokenError, float] | None = None  # a refused grant, until when
        self.fetched = 0  # token requests this process made (for tests and the bench)

    @property
    def lease_seconds(self) -> float:
        return self.config.timeout + 10.0  # a holder that died frees the lease after this

    def authorize(self, reject: str | None = None) -> Authorization:
        """The header for the next call; ``reject``: the fingerprint of a token the API refused."""
        with self._lock:
            token = self._local
            margin = self.config.refresh_margin_seconds
            fresh = token is not None and not token.expires_within(margin, self.clock())
            if token is not None and fresh and fingerprint(token.access_token) != reject:
                return Authorization(token.authorization, fingerprint(token.access_token))
            if self._refused is not None and time.monotonic() < self._refused[1]:
                raise self._refused[0]  # the same answer: no request per call of a bulk task
            try:
                token = self._shared(reject)
            except OAuth2TokenError as exc:
                if not exc.retryable:
                    self._refused = (exc, time.monotonic() + REFUSED_SECONDS)
                raise
            self._refused, self._local = None, token
            return Authorization(token.authorization, fingerprint(token.access_token))

    def _shared(self, reject: str | None) -> OAuth2Token:
        deadline = time.monotonic() + self.lease_seconds + self.config.timeout
        while True:
            decision = self.backend.token_lease(
                self.name, self._holder, self.lease_seconds, self.config.refresh_margin_seconds, reject
            )
            if decision.kind == TokenDecisionKind.USE:
                token = OAuth2Token.from_dict(json.loads(decision.entry))
                _register(token)
                return token
            if decision.kind == TokenDecisionKind.FETCH:
                stale = OAuth2Token.from_dict(json.loads(decision.entry)) if decision.entry else None
                return self._fetch(stale)
            if time.monotonic() > deadline:  # the holder neither stored a token nor let go
                raise TokenEndpointError(
                    self.name, "lease_timeout",
                    f"no token after {self.lease_seconds:.0f} s of waiting for another worker's token request",
                    None, retryable=True,
                )  # fmt: skip
            time.sleep(min(WAIT_STEP, max(decision.wait, 0.005)))

    def _fetch(self, stale: OAuth2Token | None) -> OAuth2Token:
        """One token request under the lease (released on failure), through the token key's limiter
        and breaker; the new token is stored for every worker."""
        try:
            refresh = None
            if self.config.grant_type is GrantType.REFRESH_TOKEN:
                refresh = (stale.refresh_token if stale else None) or self.config.refresh_token
            token = self._request_token(refresh)
            if token.refresh_token is None and refresh is not None:  # not rotated: keep the one we used
                token = replace(token, refresh_token=refresh)
            _register(token)
            self.backend.token_store(
                self.name, self._holder, json.dumps(token.to_dict()), token.expires_at,
                fingerprint(token.access_token),
            )  # fmt: skip
            return token
        except BaseException:
            self.backend.token_release(self.name, self._holder)
            raise

    def _request_token(self, refresh: str | None) -> OAuth2Token:
        admission = self.backend.admit(self._request)
        if not admission.granted:
            reopen = admission.breaker.reopen_at if admission.breaker else None
            raise CircuitOpenError(self.token_key, reopen, str(admission.reason))
        if admission.wait > 0:
            time.sleep(admission.wait)
        failed = True
        try:
            self.fetched += 1
            with self._session() as session:
                token = request_token(session, self.config, refresh_token=refresh)
            failed = False
            logger.info("OAuth2 connection %r: new access token (token request %d)", self.name, self.fetched)
            return token
        except Exception as exc:
            failed = getattr(exc, "retryable", True)  # a refused grant is the client's fault, not an outage
            raise
        finally:
            verdict = Verdict.of(self._request, admission, failed)
            if verdict is not None:
                self.backend.record(verdict)


_SHARED: dict[tuple[str, str], SharedTokens] = {}
_SHARED_LOCK = threading.Lock()


def shared_tokens(config: OAuth2ClientConfig, backend: StateBackend) -> SharedTokens:
    """This process's :class:`SharedTokens` for a connection and store (reused across calls and tasks)."""
    key = (backend.url, config.conn_id)
    with _SHARED_LOCK:
        found = _SHARED.get(key)
        if found is None or found.config != config:
            found = _SHARED[key] = SharedTokens(config, backend)
        return found

"""OAuth2 tokens shared by every worker through the state store: the single-flight lease on both
stores, the call path against the demo's OAuth2 server (its /admin/oauth counters), 401 recovery,
refresh-token rotation, clear errors, and 8 processes needing a token at once."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from fleet import run_workers

from api_orchestration import Guard, ResilientCaller, RetryPolicy
from api_orchestration.calls.engines import call_concurrently_async
from api_orchestration.calls.oauth2 import InvalidClientError, config_from_connection
from api_orchestration.calls.tokens import SharedTokens, fingerprint
from api_orchestration.policy import BreakerPolicy
from api_orchestration.resilience.tokens import TokenDecisionKind as K


@dataclass
class Conn:
    conn_id: str
    host: str | None
    login: str | None
    password: str | None
    extra_dejson: dict[str, Any] = field(default_factory=dict)


def conn_fields(demo, conn_id: str = "demo_oauth", **extra: Any) -> dict[str, Any]:
    return {
        "conn_id": conn_id,
        "host": f"{demo.url}/oauth/token",
        "login": extra.pop("login", "demo-client"),
        "password": extra.pop("password", "demo-secret"),
        "extra": extra,
    }


def tokens_for(demo, backend, conn_id: str = "demo_oauth", **extra: Any) -> SharedTokens:
    f = conn_fields(demo, conn_id, **extra)
    return SharedTokens(
        config_from_connection(Conn(f["conn_id"], f["host"], f["login"], f["password"], f["extra"])), backend
    )


def counts(demo) -> dict[str, Any]:
    return requests.get(f"{demo.url}/admin/oauth", timeout=5).json()["counts"]


def admin(demo, what: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = requests.post(f"{demo.url}/admin/oauth/{what}", json=body, timeout=5)
    answer.raise_for_status()
    return answer.json()


def test_the_lease_lets_one_caller_fetch(backend) -> None:
    name = "crm_oauth"
    first = backend.token_lease(name, "a", 5.0, 60.0)
    assert first.kind == K.FETCH and first.entry == ""
    waiting = backend.token_lease(name, "b", 5.0, 60.0)
    assert waiting.kind == K.WAIT and 0 < waiting.wait <= 5.0
    entry = json.dumps({"access_token": "at_1"})
    backend.token_store(name, "a", entry, time.time() + 3600, "fp1")
    used = backend.token_lease(name, "b", 5.0, 60.0)
    assert (used.kind, used.entry) == (K.USE, entry)
    # a rejected token: one caller fetches (and gets the stale entry, for its refresh token), others wait
    again = backend.token_lease(name, "b", 5.0, 60.0, reject="fp1")
    assert (again.kind, again.entry) == (K.FETCH, entry)
    assert backend.token_lease(name, "c", 5.0, 60.0, reject="fp1").kind == K.WAIT
    assert backend.token_lease(name, "c", 5.0, 60.0, reject="other").kind == K.USE  # not the rejected one
    backend.token_release(name, "b")  # a failed fetch frees the lease; the entry stays
    assert backend.token_lease(name, "c", 5.0, 60.0).kind == K.USE
    # within the margin of its expiry the token is due: refreshed before it expires
    backend.token_store(name, "c", entry, time.time() + 30, "fp2")
    assert backend.token_lease(name, "d", 5.0, 60.0).kind == K.FETCH
    assert backend.token_lease(name, "e", 5.0, 10.0).kind == K.USE
    # a holder that died: its lease expires
    backend.token_store(name, "d", entry, time.time() - 1, "fp3")
    assert backend.token_lease(name, "f", 0.2, 0.0).kind == K.FETCH
    assert backend.token_lease(name, "g", 0.2, 0.0).kind == K.WAIT
    time.sleep(0.3)
    assert backend.token_lease(name, "g", 0.2, 0.0).kind == K.FETCH
    backend.token_store(name, "g", entry, None, "fp4")  # no expires_in: good until the API refuses it
    assert backend.token_lease(name, "h", 5.0, 60.0).kind == K.USE


def test_calls_share_one_token_and_a_401_costs_one_refresh(demo, backend, caplog) -> None:
    url = f"{demo.url}/oauth/api/things"
    breaker = BreakerPolicy(failure_rate=0.5, window_size=4, min_calls=2)
    callers = []
    for _ in range(2):  # two workers: each its own SharedTokens, one store
        guard = Guard(
            backend=backend, limit_key="things", breaker_key="things", breaker=breaker,
            retry=RetryPolicy(max_attempts=1), tokens=tokens_for(demo, backend, scopes=["read"]),
        )  # fmt: skip
        callers.append(ResilientCaller(requests.Session(), guard, timeout=5))
    for caller in callers * 3:
        assert caller.call("GET", url).json()["client_id"] == "demo-client"
    assert counts(demo)["token_requests"] == 1
    admin(demo, "revoke", {"client_id": "demo-client"})
    caplog.set_level(logging.WARNING)
    for caller in callers * 3:  # each worker meets the 401 once: one new token for both
        assert caller.call("GET", url).status_code == 200
    c = counts(demo)
    assert c["token_requests"] == 2 and c["api_invalid_token"] == 2
    for caller in callers:
        caller.flush()
    status = backend.breaker_status("things")
    assert status.state == "closed" and "1" not in status.outcomes  # a refused token is no failure
    assert "answered 401 to the OAuth2 token of 'demo_oauth'" in caplog.text
    token = callers[0].guard.tokens._local.access_token
    assert token not in caplog.text


def test_the_async_engine_shares_the_token(demo, backend) -> None:
    tokens = tokens_for(demo, backend)
    guard = Guard(backend=backend, limit_key="things", retry=RetryPolicy(max_attempts=1), tokens=tokens)
    rows = list(
        call_concurrently_async(
            40, lambda i: {"method": "GET", "url": f"{demo.url}/oauth/api/items/{i}"}, guard=guard,
            concurrency=16, timeout=5.0,
        )
    )  # fmt: skip
    assert all(row["ok"] for row in rows) and counts(demo)["token_requests"] == 1
    admin(demo, "expire", {})
    rows = list(
        call_concurrently_async(
            40, lambda i: {"method": "GET", "url": f"{demo.url}/oauth/api/items/{i}"}, guard=guard,
            concurrency=16, timeout=5.0,
        )
    )  # fmt: skip
    assert all(row["ok"] for row in rows), rows[:3]
    assert counts(demo)["token_requests"] == 2


def test_a_rotated_refresh_token_is_kept(demo, backend) -> None:
    refresh = admin(demo, "refresh_tokens", {"client_id": "demo-client"})["refresh_token"]
    tokens = tokens_for(demo, backend, grant_type="refresh_token", refresh_token=refresh)
    guard = Guard(backend=backend, limit_key="things", retry=RetryPolicy(max_attempts=1), tokens=tokens)
    caller = ResilientCaller(requests.Session(), guard, timeout=5)
    for _ in range(
        3
    ):  # each round: the access token expires at the server, a refresh rotates the refresh token
        assert caller.call("GET", f"{demo.url}/oauth/api/things").status_code == 200
        admin(demo, "expire", {})
    other = ResilientCaller(  # another worker, long after the configured refresh token was used up
        requests.Session(),
        Guard(
            backend=backend,
            limit_key="things",
            tokens=tokens_for(demo, backend, grant_type="refresh_token", refresh_token=refresh),
        ),
        timeout=5,
    )
    assert other.call("GET", f"{demo.url}/oauth/api/things").status_code == 200
    c = counts(demo)
    assert c["grant_refresh_token"] == 4 and c.get("error_invalid_grant", 0) == 0


def test_invalid_client_names_the_connection_and_hides_the_secret(demo, backend) -> None:
    tokens = tokens_for(demo, backend, conn_id="crm_oauth", password="wrong-secret-123")
    guard = Guard(backend=backend, limit_key="things", tokens=tokens)
    with pytest.raises(InvalidClientError) as caught:
        ResilientCaller(requests.Session(), guard, timeout=5).call("GET", f"{demo.url}/oauth/api/things")
    text = str(caught.value)
    assert "'crm_oauth'" in text and "invalid_client" in text and "wrong-secret-123" not in text
    # the lease was given back: the next caller may try at once
    assert backend.token_lease("crm_oauth", "next", 5.0, 60.0).kind == K.FETCH
    assert backend.breaker_status("crm_oauth:token").outcomes.count("1") == 0  # the client's fault


def test_eight_processes_with_an_expired_token_make_one_token_request(demo, state_url) -> None:
    """8 processes x 50 calls: first with a token the server expired (each worker meets a 401), then
    with one the store holds as expired (each worker needs a new one before its first call); the
    second round runs bulk mode's asyncio engine. Each round makes exactly one token request."""
    from api_orchestration.state import backend_for_url

    backend = backend_for_url(state_url)
    tokens = tokens_for(demo, backend)
    tokens.authorize()  # a token every worker finds in the store ...
    admin(demo, "expire", {})  # ... that the server no longer takes (the store does not know)
    args = {
        "mode": "oauth", "state_url": state_url, "key": "things", "calls": 50,
        "target": f"{demo.url}/oauth/api/things", "conn": conn_fields(demo),
    }  # fmt: skip
    _, results = run_workers([{**args, "prime": True}] * 8)  # each holds the token before the start
    assert [r.get("ok") for r in results] == [50] * 8, results
    assert counts(demo)["token_requests"] == 2 and sum(r["token_requests"] for r in results) == 1
    assert counts(demo)["api_invalid_token"] == 8  # one 401 per worker, each recovered
    # the store's token expired (as an idle hour would leave it): due for every worker at once
    decision = backend.token_lease("demo_oauth", "test", 5.0, 60.0)
    entry = json.loads(decision.entry)
    backend.token_store(
        "demo_oauth", "test", decision.entry, time.time() - 1, fingerprint(entry["access_token"])
    )
    _, results = run_workers([{**args, "engine": "async"}] * 8)
    assert [r.get("ok") for r in results] == [50] * 8, results
    assert counts(demo)["token_requests"] == 3 and sum(r["token_requests"] for r in results) == 1
    assert counts(demo)["api_invalid_token"] == 8
    backend.close()

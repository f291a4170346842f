"""The pure client-side pieces for real APIs' conventions: rate-limit headers, HTTP cache decisions, the
OAuth2 client config and token request. Plain inputs first, then one round each against the demo API."""

from __future__ import annotations

import json
import time
from email.utils import formatdate
from typing import Any

import pytest
import requests

from api_orchestration.calls.oauth2 import (
    GrantType,
    InvalidClientError,
    InvalidGrantError,
    InvalidScopeError,
    OAuth2ClientConfig,
    OAuth2ConfigError,
    OAuth2Token,
    TokenAuthMethod,
    TokenEndpointError,
    basic_auth,
    config_from_connection,
    load_config,
    parse_token_response,
    request_token,
    token_form,
)
from api_orchestration.errors import ConfigurationError
from api_orchestration.resilience.http_cache import (
    CacheEntry,
    CacheLookup,
    StoreVerdict,
    conditional_headers,
    entry_from_response,
    freshness_lifetime,
    is_cacheable_method,
    lookup,
    parse_cache_control,
    refreshed,
    store_decision,
)
from api_orchestration.resilience.ratelimit_headers import (
    HeaderStyle,
    PauseReason,
    is_rate_limited,
    parse_rate_limit,
    parse_retry_after,
    parse_sf_list,
    pause_for,
)

NOW = 1_800_000_000.0  # a fixed clock (2027-01-15)


def early_in_window(seconds: int, need: float) -> None:
    """Wait until at least ``need`` seconds remain in the current fixed window of ``seconds`` (windows align to the epoch)."""
    while seconds - time.time() % seconds < need:
        time.sleep(0.02)


# --- rate-limit headers: plain inputs ---------------------------------------------------------


def test_github_headers() -> None:
    headers = {
        "X-RateLimit-Limit": "5000",
        "X-RateLimit-Remaining": "4999",
        "X-RateLimit-Used": "1",
        "X-RateLimit-Reset": str(int(NOW) + 1200),
        "X-RateLimit-Resource": "core",
    }
    info = parse_rate_limit(headers, status=200, now=NOW)
    assert info.style is HeaderStyle.X_RATELIMIT
    assert (info.limit, info.remaining, info.used, info.resource) == (5000, 4999, 1, "core")
    assert info.reset_at == NOW + 1200  # an epoch value stays absolute
    assert not info.exhausted and not pause_for(info, now=NOW)


def test_github_exhausted_primary_limit_pauses_until_reset() -> None:
    headers = {
        "x-ratelimit-limit": "60",
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": str(int(NOW) + 42),
    }
    for status in (403, 429, 200):  # a success with nothing left: the next call would be refused
        info = parse_rate_limit(headers, status=status, now=NOW)
        assert info.exhausted and is_rate_limited(info) == (status != 200)
        pause = pause_for(info, now=NOW)
        assert (pause.seconds, pause.until, pause.reason) == (42.0, NOW + 42, PauseReason.EXHAUSTED)


def test_github_secondary_limit_follows_retry_after() -> None:
    headers = {"x-ratelimit-limit": "5000", "x-ratelimit-remaining": "4000", "retry-after": "30"}
    info = parse_rate_limit(headers, status=403, now=NOW)
    assert is_rate_limited(info) and not info.exhausted
    assert (pause_for(info, now=NOW).seconds, pause_for(info, now=NOW).reason) == (
        30.0,
        PauseReason.RETRY_AFTER,
    )


def test_a_throttle_without_timing_waits_the_default_minute() -> None:
    info = parse_rate_limit({}, status=429, now=NOW)
    assert info.style is HeaderStyle.NONE
    pause = pause_for(info, now=NOW)
    assert (pause.seconds, pause.reason) == (60.0, PauseReason.THROTTLED)
    assert pause_for(info, now=NOW, default_wait=5).seconds == 5.0
    forbidden = parse_rate_limit({}, status=403, now=NOW, body='{"message": "Resource not accessible"}')
    assert not is_rate_limited(forbidden) and not pause_for(forbidden, now=NOW)  # a plain permission error
    secondary = parse_rate_limit(
        {"x-ratelimit-remaining": "4000"},
        status=403,
        now=NOW,
        body='{"message": "You have exceeded a secondary rate limit"}',
    )
    assert is_rate_limited(secondary) and pause_for(secondary, now=NOW).reason is PauseReason.THROTTLED


def test_ietf_structured_fields_with_two_windows() -> None:
    headers = {
        "RateLimit-Policy": '"burst";q=100;w=60, "daily";q=1000;w=86400',
        "RateLimit": '"burst";r=0;t=30, "daily";r=200;t=3600',
    }
    info = parse_rate_limit(headers, status=429, now=NOW)
    assert info.style is HeaderStyle.IETF
    assert [(w.name, w.limit, w.window_seconds, w.remaining, w.reset_at) for w in info.windows] == [
        ("burst", 100, 60.0, 0, NOW + 30),
        ("daily", 1000, 86400.0, 200, NOW + 3600),
    ]
    assert (info.limit, info.remaining, info.reset_at) == (100, 0, NOW + 30)  # the tightest window
    assert pause_for(info, now=NOW).seconds == 30.0
    both = parse_rate_limit({"RateLimit": "burst;r=0;t=30, daily;r=0;t=3600"}, status=429, now=NOW)  # tokens
    assert pause_for(both, now=NOW).seconds == 3600.0  # every exhausted window must have reset


def test_ietf_draft_07_and_legacy_fields() -> None:
    draft7 = parse_rate_limit(
        {"RateLimit": "limit=10, remaining=5, reset=3", "RateLimit-Policy": "10;w=1"}, now=NOW
    )
    assert draft7.style is HeaderStyle.IETF_DRAFT7
    assert (draft7.limit, draft7.remaining, draft7.reset_at, draft7.windows[0].window_seconds) == (
        10,
        5,
        NOW + 3,
        1.0,
    )
    legacy = parse_rate_limit(
        {
            "RateLimit-Limit": "100",
            "RateLimit-Remaining": "0",
            "RateLimit-Reset": "50",
            "RateLimit-Policy": "100;w=60",
        },
        status=429,
        now=NOW,
    )
    assert legacy.style is HeaderStyle.IETF_LEGACY
    assert (legacy.limit, legacy.remaining, legacy.reset_at, legacy.windows[0].window_seconds) == (
        100,
        0,
        NOW + 50,
        60.0,
    )
    assert pause_for(legacy, now=NOW).seconds == 50.0
    policy_only = parse_rate_limit({"RateLimit-Policy": "10;w=1, 100;w=60"}, now=NOW)
    assert [(w.limit, w.window_seconds, w.remaining) for w in policy_only.windows] == [
        (10, 1.0, None),
        (100, 60.0, None),
    ]


def test_x_variants_and_shopify() -> None:
    twitter = parse_rate_limit(
        {"x-rate-limit-limit": "15", "x-rate-limit-remaining": "0", "x-rate-limit-reset": "12"}, now=NOW
    )
    assert twitter.reset_at == NOW + 12  # a small reset is seconds from now
    shopify = parse_rate_limit({"X-Shopify-Shop-Api-Call-Limit": "40/40"}, status=429, now=NOW)
    assert (shopify.style, shopify.limit, shopify.remaining) == (HeaderStyle.SHOPIFY, 40, 0)
    assert pause_for(shopify, now=NOW).reason is PauseReason.THROTTLED  # no reset given: the default wait


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", NOW + 120),
        ("0", NOW),
        ("1.5", NOW + 1.5),
        (formatdate(NOW + 90, usegmt=True), NOW + 90),
        (formatdate(NOW - 90, usegmt=True), NOW),  # a date in the past: now
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_malformed_headers_never_crash() -> None:
    for headers in (
        {"RateLimit": '"unterminated;r=1'},
        {"RateLimit": ";;;,,,"},
        {"RateLimit-Policy": "q=;w="},
        {"x-ratelimit-remaining": "-3", "x-ratelimit-reset": "nan"},
        {"RateLimit-Limit": "abc", "RateLimit-Remaining": "1e999"},
        {"retry-after": "inf"},
    ):
        info = parse_rate_limit(headers, status=429, now=NOW)
        assert pause_for(info, now=NOW).seconds >= 0


def test_structured_field_strings_may_hold_commas_and_semicolons() -> None:
    assert parse_sf_list('"a,b;c";q=1, tok;w=2;x') == [("a,b;c", {"q": 1}), ("tok", {"w": 2, "x": True})]


# --- HTTP cache: plain inputs -----------------------------------------------------------------


def test_cache_control_parsing() -> None:
    cc = parse_cache_control('Max-Age=60, no-cache, private, community="UCI", max-age=30')
    assert (cc.max_age, cc.no_cache, cc.private, cc.no_store) == (30, True, True, False)
    assert cc.extensions == (("community", '"UCI"'),)
    assert parse_cache_control("max-age=abc").max_age == 0  # malformed: stale
    assert parse_cache_control(None) == parse_cache_control("")


@pytest.mark.parametrize(
    ("headers", "ttl", "lifetime"),
    [
        ({"Cache-Control": "max-age=60"}, None, 60.0),
        ({"Cache-Control": "max-age=60"}, 10, 10.0),  # the caller's ttl caps the server's
        ({"Cache-Control": "max-age=60", "Age": "15"}, None, 45.0),
        ({"Cache-Control": "max-age=60, s-maxage=5"}, None, 5.0),
        ({"Cache-Control": "no-cache", "ETag": '"x"'}, 300, 0.0),
        ({"Cache-Control": "no-store"}, 300, 0.0),
        ({"Expires": formatdate(NOW + 120, usegmt=True), "Date": formatdate(NOW, usegmt=True)}, None, 120.0),
        ({"Expires": "0"}, None, 0.0),  # an invalid Expires means already expired
        ({}, 300, 300.0),  # no freshness information: the caller's ttl
        ({}, None, 0.0),
    ],
)
def test_freshness_lifetime(headers: dict[str, str], ttl: float | None, lifetime: float) -> None:
    assert freshness_lifetime(headers, ttl=ttl, now=NOW) == lifetime


@pytest.mark.parametrize(
    ("method", "status", "request_headers", "response_headers", "verdict"),
    [
        ("GET", 200, {}, {"Cache-Control": "max-age=60"}, StoreVerdict.STORE),
        ("head", 200, {}, {"Cache-Control": "max-age=60"}, StoreVerdict.STORE),
        ("POST", 200, {}, {"Cache-Control": "max-age=60"}, StoreVerdict.METHOD),
        ("GET", 500, {}, {"Cache-Control": "max-age=60"}, StoreVerdict.STATUS),
        ("GET", 200, {}, {"Cache-Control": "no-store"}, StoreVerdict.NO_STORE),
        ("GET", 200, {"Cache-Control": "no-store"}, {"Cache-Control": "max-age=60"}, StoreVerdict.NO_STORE),
        ("GET", 200, {}, {"Cache-Control": "max-age=60", "Vary": "Accept, *"}, StoreVerdict.VARY_STAR),
        (
            "GET",
            200,
            {"Authorization": "Bearer t"},
            {"Cache-Control": "max-age=60"},
            StoreVerdict.PRIVATE_AUTH,
        ),
        (
            "GET",
            200,
            {"Authorization": "Bearer t"},
            {"Cache-Control": "public, max-age=60"},
            StoreVerdict.STORE,
        ),
        (
            "GET",
            200,
            {},
            {"Cache-Control": "no-cache", "ETag": '"v1"'},
            StoreVerdict.STORE,
        ),  # store, revalidate
        ("GET", 200, {}, {"Cache-Control": "no-cache"}, StoreVerdict.USELESS),
    ],
)
def test_store_decision(
    method: str,
    status: int,
    request_headers: dict[str, str],
    response_headers: dict[str, str],
    verdict: StoreVerdict,
) -> None:
    assert store_decision(method, status, request_headers, response_headers, now=NOW) is verdict


def test_methods_are_configurable() -> None:
    assert is_cacheable_method("get") and not is_cacheable_method("POST")
    assert is_cacheable_method("POST", methods=("GET", "POST"))
    verdict = store_decision("POST", 200, {}, {"Cache-Control": "max-age=5"}, methods=("POST",), now=NOW)
    assert verdict is StoreVerdict.STORE


def test_entry_lifecycle_fresh_revalidate_and_304() -> None:
    headers = {
        "Cache-Control": "max-age=60",
        "ETag": '"v1"',
        "Content-Type": "application/json",
        "Content-Length": "2",
    }
    entry = entry_from_response(200, {"Accept": "application/json"}, headers, b"{}", now=NOW)
    assert (entry.fresh_until, entry.etag) == (NOW + 60, '"v1"')
    assert lookup(entry, {}, now=NOW + 59) is CacheLookup.FRESH
    assert lookup(entry, {"Cache-Control": "no-cache"}, now=NOW + 1) is CacheLookup.REVALIDATE
    assert lookup(entry, {"Cache-Control": "max-age=0"}, now=NOW + 1) is CacheLookup.REVALIDATE
    assert lookup(entry, {}, now=NOW + 60) is CacheLookup.REVALIDATE
    assert conditional_headers(entry) == {"If-None-Match": '"v1"'}
    renewed = refreshed(
        entry, {"Cache-Control": "max-age=120", "ETag": '"v1"', "Content-Length": "0"}, now=NOW + 61
    )
    assert renewed.body == b"{}" and renewed.fresh_until == NOW + 181
    assert (
        renewed.header_map["Cache-Control"] == "max-age=120" and renewed.header_map["Content-Length"] == "2"
    )
    assert lookup(renewed, {}, now=NOW + 100) is CacheLookup.FRESH
    with pytest.raises(ValueError, match="v2"):
        refreshed(entry, {"ETag": '"v2"'}, now=NOW)
    assert CacheEntry.from_dict(json.loads(json.dumps(renewed.to_dict()))) == renewed
    assert lookup(None, {}, now=NOW) is CacheLookup.MISS


def test_vary_and_entries_without_validators() -> None:
    entry = entry_from_response(
        200,
        {"Accept-Language": "de"},
        {"Cache-Control": "max-age=60", "Vary": "Accept-Language"},
        b"x",
        now=NOW,
    )
    assert lookup(entry, {"accept-language": "de"}, now=NOW) is CacheLookup.FRESH
    assert lookup(entry, {"Accept-Language": "fr"}, now=NOW) is CacheLookup.MISS
    assert (
        lookup(entry, {"accept-language": "de"}, now=NOW + 61) is CacheLookup.MISS
    )  # stale, nothing to revalidate with
    dated = entry_from_response(
        200, {}, {"Last-Modified": "Wed, 21 Oct 2015 07:28:00 GMT"}, b"x", now=NOW, ttl=10
    )
    assert conditional_headers(dated) == {"If-Modified-Since": "Wed, 21 Oct 2015 07:28:00 GMT"}


# --- OAuth2 config and token answers: plain inputs --------------------------------------------


class FakeConnection:
    """The attributes an Airflow Connection exposes (a plain value object, not a mock of behaviour)."""

    def __init__(
        self,
        conn_id: str = "crm_oauth",
        host: str | None = "https://login.example.com/oauth2/token",
        login: str | None = "cid",
        password: str | None = "s3cr3t-value",
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.conn_id, self.host, self.login, self.password = conn_id, host, login, password
        self.extra_dejson = extra or {}


def test_config_from_connection() -> None:
    config = config_from_connection(
        FakeConnection(
            extra={
                "scopes": "read write",
                "audience": "https://api.example.com",
                "token_params": {"resource": "r1", "version": 2},
                "auth_method": "client_secret_post",
                "refresh_margin_seconds": 30,
            }
        )
    )
    assert config.token_url == "https://login.example.com/oauth2/token"
    assert (config.client_id, config.client_secret, config.scopes) == (
        "cid",
        "s3cr3t-value",
        ("read", "write"),
    )
    assert config.auth_method is TokenAuthMethod.POST and config.grant_type is GrantType.CLIENT_CREDENTIALS
    assert config.token_params == (("resource", "r1"), ("version", "2"))
    assert "s3cr3t-value" not in repr(config)
    assert token_form(config) == {
        "grant_type": "client_credentials",
        "scope": "read write",
        "audience": "https://api.example.com",
        "resource": "r1",
        "version": "2",
        "client_id": "cid",
        "client_secret": "s3cr3t-value",
    }
    assert basic_auth(config) is None
    basic = config_from_connection(
        FakeConnection(
            login="a b", password="p:w&", host=None, extra={"token_url": "http://h/token", "scopes": ["x"]}
        )
    )
    assert basic_auth(basic) == ("a+b", "p%3Aw%26")  # RFC 6749 §2.3.1: form-urlencoded first
    assert "client_secret" not in token_form(basic) and token_form(basic)["scope"] == "x"


@pytest.mark.parametrize(
    ("kwargs", "field", "fix"),
    [
        ({"login": None}, "login", "set the connection's login"),
        ({"password": ""}, "password", "set the connection's password"),
        ({"host": "login.example.com"}, "host", "extra.token_url"),
        ({"host": None, "extra": {"token_url": "ftp://x/token"}}, "extra.token_url", "absolute http(s) URL"),
        ({"extra": {"scopes": 5}}, "extra.scopes", "list of scope strings"),
        (
            {"extra": {"auth_method": "private_key_jwt"}},
            "extra.auth_method",
            "client_secret_basic, client_secret_post",
        ),
        ({"extra": {"grant_type": "password"}}, "extra.grant_type", "client_credentials, refresh_token"),
        (
            {"extra": {"grant_type": "refresh_token"}},
            "extra.refresh_token",
            "required with grant_type refresh_token",
        ),
        (
            {"extra": {"token_params": {"client_secret": "x"}}},
            "extra.token_params.client_secret",
            "login/password",
        ),
        ({"extra": {"token_params": ["a"]}}, "extra.token_params", "object of form parameters"),
        ({"extra": {"scope": "read"}}, "extra.scope", "allowed: audience"),
        ({"extra": {"timeout": 0}}, "extra.timeout", "> 0"),
        ({"extra": {"refresh_margin_seconds": -1}}, "extra.refresh_margin_seconds", ">= 0"),
    ],
)
def test_config_errors_name_the_connection_and_field(kwargs: dict[str, Any], field: str, fix: str) -> None:
    with pytest.raises(OAuth2ConfigError) as caught:
        config_from_connection(FakeConnection(**kwargs))
    error = caught.value
    assert isinstance(error, ConfigurationError) and isinstance(error, ValueError)
    assert (error.conn_id, error.field) == ("crm_oauth", field)
    assert str(error).startswith(f"OAuth2 connection 'crm_oauth': {field} ") and fix in str(error)
    assert "s3cr3t-value" not in str(error)


def test_a_secret_of_the_wrong_type_is_not_shown() -> None:
    with pytest.raises(OAuth2ConfigError) as caught:
        config_from_connection(FakeConnection(extra={"refresh_token": 12345678}))
    assert "12345678" not in str(caught.value) and caught.value.field == "extra.refresh_token"


CONFIG = OAuth2ClientConfig(
    "crm_oauth", "https://login.example.com/token", "cid", "s3cr3t-value", scopes=("read",)
)


def test_token_answer_parsing() -> None:
    body = json.dumps(
        {"access_token": "at-1", "token_type": "bearer", "expires_in": "3599", "refresh_token": "rt-2"}
    ).encode()
    token = parse_token_response(CONFIG, 200, {}, body, now=NOW)
    assert (token.token_type, token.expires_at, token.scopes, token.refresh_token) == (
        "Bearer",
        NOW + 3599,
        ("read",),
        "rt-2",
    )
    assert token.authorization == "Bearer at-1" and "at-1" not in repr(token) and "rt-2" not in repr(token)
    assert token.expires_within(60, NOW + 3540) and not token.expires_within(60, NOW + 3538)
    assert OAuth2Token.from_dict(json.loads(json.dumps(token.to_dict()))) == token
    no_expiry = parse_token_response(
        CONFIG, 200, {}, b'{"access_token": "a", "token_type": "Bearer", "scope": "x y"}', now=NOW
    )
    assert (no_expiry.expires_at, no_expiry.scopes) == (None, ("x", "y"))
    assert not no_expiry.expires_within(10_000, NOW + 10**9)


@pytest.mark.parametrize(
    ("status", "body", "headers", "kind", "retryable"),
    [
        (
            401,
            {"error": "invalid_client", "error_description": "bad secret s3cr3t-value"},
            {},
            InvalidClientError,
            False,
        ),
        (400, {"error": "invalid_grant"}, {}, InvalidGrantError, False),
        (400, {"error": "invalid_scope", "error_description": "no"}, {}, InvalidScopeError, False),
        (429, {"error": "rate_limited"}, {"Retry-After": "7"}, TokenEndpointError, True),
        (503, None, {}, TokenEndpointError, True),
        (200, {"access_token": "a", "token_type": "mac"}, {}, TokenEndpointError, False),
        (200, {"token_type": "Bearer"}, {}, TokenEndpointError, False),
        (
            200,
            {"access_token": "a", "token_type": "Bearer", "expires_in": "soon"},
            {},
            TokenEndpointError,
            False,
        ),
        (404, "<html>not found</html>", {}, TokenEndpointError, False),
    ],
)
def test_token_errors_are_typed_and_never_carry_the_secret(
    status: int, body: Any, headers: dict[str, str], kind: type, retryable: bool
) -> None:
    raw = b"" if body is None else (body.encode() if isinstance(body, str) else json.dumps(body).encode())
    with pytest.raises(kind) as caught:
        parse_token_response(CONFIG, status, headers, raw, now=NOW)
    error = caught.value
    assert error.conn_id == "crm_oauth" and error.retryable is retryable
    assert "s3cr3t-value" not in str(error) and "s3cr3t-value" not in repr(error.args)
    assert "crm_oauth" in str(error)
    if status == 429:
        assert error.retry_after == 7.0


def test_a_transport_failure_is_retryable_and_names_no_secret() -> None:
    config = OAuth2ClientConfig(
        "crm_oauth",
        "http://127.0.0.1:9/token",
        "cid",
        "s3cr3t-value",
        auth_method=TokenAuthMethod.POST,
        timeout=2,
    )
    with requests.Session() as session, pytest.raises(TokenEndpointError) as caught:
        request_token(session, config)
    assert caught.value.retryable and caught.value.error == "transport"
    assert "s3cr3t-value" not in str(caught.value) and caught.value.__cause__ is None


# --- against the demo API ---------------------------------------------------------------------


def test_rate_limit_headers_of_the_demo(demo) -> None:
    policy = {
        "tenant": "acme",
        "windows": [
            {"name": "second", "limit": 2, "seconds": 1},
            {"name": "hour", "limit": 3, "seconds": 3600},
        ],
    }
    requests.post(f"{demo.url}/admin/ratelimits", json=policy, timeout=5).raise_for_status()
    early_in_window(3600, 5)
    early_in_window(1, 0.6)
    with requests.Session() as session:
        answers = [session.get(f"{demo.url}/limits/ietf/acme/x", timeout=5) for _ in range(3)]
        time.sleep(1.05)
        answers += [session.get(f"{demo.url}/limits/github/acme/x", timeout=5) for _ in range(2)]
    infos = [parse_rate_limit(r.headers, status=r.status_code) for r in answers]
    assert [r.status_code for r in answers[:3]] == [200, 200, 429]
    assert [w.name for w in infos[0].windows] == ["second", "hour"]
    assert (infos[2].remaining, infos[2].limit) == (0, 2) and infos[2].exhausted
    assert 0 <= pause_for(infos[2]).seconds <= 1.0
    assert [r.status_code for r in answers[3:]] == [200, 403]  # the hour's budget ran out
    github = infos[4]
    assert (github.style, github.limit, github.remaining, github.resource) == (
        HeaderStyle.X_RATELIMIT,
        3,
        0,
        "core",
    )
    pause = pause_for(github)
    assert pause.reason is PauseReason.EXHAUSTED and 0 < pause.seconds <= 3600
    assert github.reset_at is not None and github.reset_at % 3600 == 0


def test_cache_decisions_against_the_demo(demo) -> None:
    url = f"{demo.url}/reference/countries"
    with requests.Session() as session:
        first = session.get(url, params={"max_age": 1}, timeout=5)
        assert store_decision("GET", first.status_code, {}, first.headers) is StoreVerdict.STORE
        entry = entry_from_response(first.status_code, {}, first.headers, first.content, now=time.time())
        assert lookup(entry, {}, now=time.time()) is CacheLookup.FRESH  # served without a call
        later = time.time() + 1.5
        assert lookup(entry, {}, now=later) is CacheLookup.REVALIDATE
        answer = session.get(url, params={"max_age": 1}, headers=conditional_headers(entry), timeout=5)
        assert answer.status_code == 304
        renewed = refreshed(entry, answer.headers, now=later)
        assert renewed.body == first.content and lookup(renewed, {}, now=later + 0.5) is CacheLookup.FRESH
        rates = session.get(f"{demo.url}/reference/rates", timeout=5)
        assert store_decision("GET", 200, {}, rates.headers) is StoreVerdict.NO_STORE
    assert demo.calls()["paths"] == {"/reference/countries": 2, "/reference/rates": 1}


def test_oauth2_against_the_demo(demo, monkeypatch) -> None:
    extra = {"scopes": ["read"], "auth_method": "client_secret_basic"}
    connection = {
        "conn_type": "generic",
        "host": f"{demo.url}/oauth/token",
        "login": "demo-client",
        "password": "demo-secret",
        "extra": extra,
    }
    monkeypatch.setenv("AIRFLOW_CONN_DEMO_OAUTH", json.dumps(connection))
    config = load_config("demo_oauth")
    assert (config.token_url, config.client_id, config.scopes) == (
        f"{demo.url}/oauth/token",
        "demo-client",
        ("read",),
    )
    with requests.Session() as session:
        token = request_token(session, config)
        assert token.expires_at is not None and 3500 < token.expires_at - time.time() <= 3600
        api = session.get(
            f"{demo.url}/oauth/api/things", headers={"Authorization": token.authorization}, timeout=5
        )
        assert api.status_code == 200 and api.json()["scope"] == "read"

        posted = OAuth2ClientConfig(
            config.conn_id, config.token_url, "demo-client", "demo-secret", auth_method=TokenAuthMethod.POST
        )
        assert request_token(session, posted).scopes == ("read", "write")

        wrong = OAuth2ClientConfig(config.conn_id, config.token_url, "demo-client", "not-the-secret")
        with pytest.raises(InvalidClientError) as caught:
            request_token(session, wrong)
        assert caught.value.status == 401 and "not-the-secret" not in str(caught.value)
        with pytest.raises(InvalidScopeError):
            request_token(
                session,
                OAuth2ClientConfig(
                    config.conn_id, config.token_url, "demo-client", "demo-secret", scopes=("admin",)
                ),
            )

        minted = requests.post(
            f"{demo.url}/admin/oauth/refresh_tokens", json={"client_id": "demo-client"}, timeout=5
        ).json()
        rotating = OAuth2ClientConfig(
            config.conn_id,
            config.token_url,
            "demo-client",
            "demo-secret",
            grant_type=GrantType.REFRESH_TOKEN,
            refresh_token=minted["refresh_token"],
        )
        first = request_token(session, rotating)
        assert first.refresh_token and first.refresh_token != minted["refresh_token"]
        with pytest.raises(InvalidGrantError) as reused:
            request_token(session, rotating)  # the configured refresh token was used: rotation invalidated it
        assert minted["refresh_token"] not in str(reused.value)
        second = request_token(session, rotating, refresh_token=first.refresh_token)
        assert second.refresh_token not in (None, first.refresh_token)
    counts = requests.get(f"{demo.url}/admin/oauth", timeout=5).json()
    assert counts["token_requests"] == 7 and counts["counts"]["granted"] == 4

"""The demo services modelled on real APIs' conventions, over real HTTP (REAL_APIS.md): OAuth2 (RFC 6749/6750),
per-tenant multi-window rate limits with GitHub and IETF headers, async export jobs, HTTP caching (RFC 9111)
and error bodies with a request id."""

from __future__ import annotations

import base64
import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
import requests

TOKEN_PATH = "/oauth/token"
CLIENT, SECRET = "demo-client", "demo-secret"


def early_in_window(seconds: int, need: float) -> None:
    """Wait until at least ``need`` seconds remain in the current fixed window of ``seconds`` (windows align to the epoch)."""
    while seconds - time.time() % seconds < need:
        time.sleep(0.02)


@pytest.fixture
def http():
    with requests.Session() as session:
        yield session


def admin(demo, method: str, path: str, json: Any = None) -> Any:
    response = requests.request(method, f"{demo.url}{path}", json=json, timeout=5)
    assert response.status_code < 300, response.text
    return response.json()


def token_request(
    demo, http, form: dict[str, str], basic: tuple[str, str] | None = None
) -> requests.Response:
    return http.post(f"{demo.url}{TOKEN_PATH}", data=form, auth=basic, timeout=5)


def client_credentials(demo, http, **form: str) -> dict[str, Any]:
    response = token_request(demo, http, {"grant_type": "client_credentials", **form}, (CLIENT, SECRET))
    assert response.status_code == 200, response.text
    return response.json()


# --- OAuth2 -----------------------------------------------------------------------------------


def test_client_credentials_with_basic_and_post_authentication(demo, http) -> None:
    basic = token_request(demo, http, {"grant_type": "client_credentials", "scope": "read"}, (CLIENT, SECRET))
    assert basic.status_code == 200
    body = basic.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}  # no refresh token (§4.4.3)
    assert (body["token_type"], body["expires_in"], body["scope"]) == ("Bearer", 3600, "read")
    assert basic.headers["Cache-Control"] == "no-store" and basic.headers["Pragma"] == "no-cache"
    form = {"grant_type": "client_credentials", "client_id": CLIENT, "client_secret": SECRET}
    posted = token_request(demo, http, form)
    assert posted.status_code == 200
    assert posted.json()["scope"] == "read write"  # no scope asked: everything the client may have
    assert posted.json()["access_token"] != body["access_token"]
    for token in (body["access_token"], posted.json()["access_token"]):
        ok = http.get(f"{demo.url}/oauth/api/things", headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert ok.status_code == 200 and ok.json()["client_id"] == CLIENT
    stats = admin(demo, "GET", "/admin/oauth")
    assert stats["token_requests"] == 2
    assert stats["counts"]["grant_client_credentials"] == 2 and stats["live_tokens"]["access"] == 2


def test_basic_credentials_are_form_url_decoded(demo, http) -> None:
    admin(
        demo,
        "POST",
        "/admin/oauth/clients",
        {"client_id": "a b", "client_secret": "p:w%", "scopes": ["read"]},
    )
    encoded = base64.b64encode(b"a+b:p%3Aw%25").decode()  # RFC 6749 §2.3.1
    response = http.post(
        f"{demo.url}{TOKEN_PATH}",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {encoded}"},
        timeout=5,
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("form", "basic", "status", "error"),
    [
        ({"grant_type": "client_credentials"}, (CLIENT, "wrong"), 401, "invalid_client"),
        ({"grant_type": "client_credentials"}, ("nobody", SECRET), 401, "invalid_client"),
        (
            {"grant_type": "client_credentials", "client_id": CLIENT, "client_secret": "x"},
            None,
            401,
            "invalid_client",
        ),
        ({"grant_type": "client_credentials"}, None, 401, "invalid_client"),
        ({"grant_type": "client_credentials", "scope": "read admin"}, (CLIENT, SECRET), 400, "invalid_scope"),
        ({"grant_type": "refresh_token", "refresh_token": "rt_nope"}, (CLIENT, SECRET), 400, "invalid_grant"),
        ({"grant_type": "refresh_token"}, (CLIENT, SECRET), 400, "invalid_request"),
        ({"grant_type": "password", "username": "u"}, (CLIENT, SECRET), 400, "unsupported_grant_type"),
        ({}, (CLIENT, SECRET), 400, "invalid_request"),
        (
            {"grant_type": "client_credentials", "client_id": CLIENT, "client_secret": SECRET},
            (CLIENT, SECRET),
            400,
            "invalid_request",
        ),
    ],
)
def test_token_errors_follow_rfc_6749(
    demo, http, form: dict[str, str], basic: tuple[str, str] | None, status: int, error: str
) -> None:
    response = token_request(demo, http, form, basic)
    assert response.status_code == status
    body = response.json()
    assert body["error"] == error and body["error_description"]
    assert SECRET not in response.text
    if status == 401 and basic is not None:
        assert response.headers["WWW-Authenticate"] == 'Basic realm="demo"'
    assert admin(demo, "GET", "/admin/oauth")["live_tokens"]["access"] == 0


def test_a_json_token_request_is_invalid(demo, http) -> None:
    response = http.post(
        f"{demo.url}{TOKEN_PATH}", json={"grant_type": "client_credentials"}, auth=(CLIENT, SECRET), timeout=5
    )
    assert (response.status_code, response.json()["error"]) == (400, "invalid_request")


def test_refresh_token_rotation(demo, http) -> None:
    minted = admin(demo, "POST", "/admin/oauth/refresh_tokens", {"client_id": CLIENT})
    first = token_request(
        demo,
        http,
        {"grant_type": "refresh_token", "refresh_token": minted["refresh_token"]},
        (CLIENT, SECRET),
    )
    assert first.status_code == 200
    rotated = first.json()["refresh_token"]
    assert rotated != minted["refresh_token"] and first.json()["expires_in"] == 3600
    reused = token_request(
        demo,
        http,
        {"grant_type": "refresh_token", "refresh_token": minted["refresh_token"]},
        (CLIENT, SECRET),
    )
    assert (reused.status_code, reused.json()["error"]) == (
        400,
        "invalid_grant",
    )  # a used refresh token is dead
    narrower = token_request(
        demo,
        http,
        {"grant_type": "refresh_token", "refresh_token": rotated, "scope": "read"},
        (CLIENT, SECRET),
    )
    assert narrower.status_code == 200 and narrower.json()["scope"] == "read"
    wider = token_request(
        demo,
        http,
        {"grant_type": "refresh_token", "refresh_token": narrower.json()["refresh_token"], "scope": "admin"},
        (CLIENT, SECRET),
    )
    assert (wider.status_code, wider.json()["error"]) == (400, "invalid_scope")
    other_client = token_request(
        demo,
        http,
        {"grant_type": "refresh_token", "refresh_token": narrower.json()["refresh_token"]},
        ("reader-client", "reader-secret"),
    )
    assert (other_client.status_code, other_client.json()["error"]) == (400, "invalid_grant")


def test_protected_api_challenges_missing_expired_and_revoked_tokens(demo, http) -> None:
    url = f"{demo.url}/oauth/api/orders"
    missing = http.get(url, timeout=5)
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="demo"'  # RFC 6750 §3.1: no error code
    garbage = http.get(url, headers={"Authorization": "Bearer nope"}, timeout=5)
    assert garbage.status_code == 401 and 'error="invalid_token"' in garbage.headers["WWW-Authenticate"]

    token = client_credentials(demo, http)["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    assert http.post(url, headers=auth, timeout=5).status_code == 200
    assert admin(demo, "POST", "/admin/oauth/expire", {"access_token": token}) == {"expired": 1}
    expired = http.get(url, headers=auth, timeout=5)
    assert expired.status_code == 401
    assert 'error="invalid_token"' in expired.headers["WWW-Authenticate"]
    assert "expired" in expired.headers["WWW-Authenticate"]

    fresh = client_credentials(demo, http)["access_token"]
    assert admin(demo, "POST", "/admin/oauth/revoke", {"client_id": CLIENT})["revoked"] == 2
    revoked = http.get(url, headers={"Authorization": f"Bearer {fresh}"}, timeout=5)
    assert revoked.status_code == 401 and 'error="invalid_token"' in revoked.headers["WWW-Authenticate"]
    counts = admin(demo, "GET", "/admin/oauth")["counts"]
    assert (counts["api_unauthorized"], counts["api_invalid_token"], counts["api_ok"]) == (1, 3, 1)


def test_tokens_expire_after_expires_in(demo, http) -> None:
    admin(demo, "POST", "/admin/oauth/settings", {"access_token_ttl": 0.3})
    body = client_credentials(demo, http)
    assert body["expires_in"] == 0  # whole seconds, rounded down
    auth = {"Authorization": f"Bearer {body['access_token']}"}
    assert http.get(f"{demo.url}/oauth/api/x", headers=auth, timeout=5).status_code == 200
    time.sleep(0.35)
    assert http.get(f"{demo.url}/oauth/api/x", headers=auth, timeout=5).status_code == 401


def test_insufficient_scope_is_403(demo, http) -> None:
    token = client_credentials(demo, http, scope="read")["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    assert http.get(f"{demo.url}/oauth/api/x", headers=auth, timeout=5).status_code == 200
    write = http.post(f"{demo.url}/oauth/api/x", headers=auth, timeout=5)
    assert write.status_code == 403
    assert 'error="insufficient_scope"' in write.headers["WWW-Authenticate"]


def test_the_token_endpoint_has_its_own_rate_limit(demo, http) -> None:
    admin(demo, "POST", "/admin/oauth/settings", {"token_rate_limit": 3, "token_rate_window": 60})
    answers = [
        token_request(demo, http, {"grant_type": "client_credentials"}, (CLIENT, SECRET)) for _ in range(5)
    ]
    assert [r.status_code for r in answers] == [200, 200, 200, 429, 429]
    assert answers[3].json()["error"] == "rate_limited"
    assert 1 <= int(answers[3].headers["Retry-After"]) <= 61
    assert http.get(f"{demo.url}/oauth/api/x", timeout=5).status_code == 401  # the API itself is not limited
    stats = admin(demo, "GET", "/admin/oauth")
    assert (stats["token_requests"], stats["counts"]["rate_limited"], stats["counts"]["granted"]) == (5, 2, 3)


# --- rate limits ------------------------------------------------------------------------------


def test_github_primary_limit(demo, http) -> None:
    admin(
        demo,
        "POST",
        "/admin/ratelimits",
        {"tenant": "acme", "windows": [{"name": "hour", "limit": 3, "seconds": 3600}]},
    )
    answers = [http.get(f"{demo.url}/limits/github/acme/repos", timeout=5) for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 403]
    assert [r.headers["x-ratelimit-remaining"] for r in answers] == ["2", "1", "0", "0"]
    assert [r.headers["x-ratelimit-used"] for r in answers] == ["1", "2", "3", "3"]
    reset = int(answers[0].headers["x-ratelimit-reset"])
    assert reset % 3600 == 0 and time.time() < reset <= time.time() + 3600
    last = answers[-1]
    assert last.headers["x-ratelimit-limit"] == "3" and last.headers["x-ratelimit-resource"] == "core"
    assert "retry-after" not in last.headers and last.json()["error"] == "rate_limited"
    other = http.get(f"{demo.url}/limits/github/globex/repos", timeout=5)  # another tenant: its own budget
    assert other.status_code == 200 and other.headers["x-ratelimit-limit"] == "10"
    report = admin(demo, "GET", "/admin/ratelimits")["tenants"]
    assert report["acme"]["admitted"] == 3 and report["acme"]["breaches"] == {"hour": 1}
    assert report["globex"]["admitted"] == 1

    admin(
        demo,
        "POST",
        "/admin/ratelimits",
        {"tenant": "acme", "windows": [{"limit": 1, "seconds": 3600}], "status": 429},
    )
    codes = [http.get(f"{demo.url}/limits/github/acme/x", timeout=5).status_code for _ in range(2)]
    assert codes == [200, 429]


def test_github_secondary_limit_answers_403_with_retry_after(demo, http) -> None:
    policy = {
        "tenant": "acme",
        "windows": [{"name": "hour", "limit": 1000, "seconds": 3600}],
        "secondary": {"limit": 2, "seconds": 10, "retry_after": 30},
    }
    admin(demo, "POST", "/admin/ratelimits", policy)
    answers = [http.post(f"{demo.url}/limits/github/acme/issues", timeout=5) for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 403, 403]
    assert answers[2].headers["retry-after"] == "30"
    assert answers[2].headers["x-ratelimit-remaining"] == "998"  # the primary budget is not what ran out
    assert answers[2].json()["error"] == "secondary_rate_limit"
    assert admin(demo, "GET", "/admin/ratelimits")["tenants"]["acme"]["secondary_refusals"] == 2


def test_ietf_headers_with_two_windows(demo, http) -> None:
    windows = [{"name": "burst", "limit": 3, "seconds": 1}, {"name": "minute", "limit": 5, "seconds": 60}]
    admin(demo, "POST", "/admin/ratelimits", {"tenant": "t1", "windows": windows})
    early_in_window(60, 5)
    early_in_window(1, 0.5)  # early in a second, so the burst window does not turn over mid-test
    first = http.get(f"{demo.url}/limits/ietf/t1/a", timeout=5)
    assert first.headers["RateLimit-Policy"] == '"burst";q=3;w=1, "minute";q=5;w=60'
    burst, minute = first.headers["RateLimit"].split(", ")
    assert burst in ('"burst";r=2;t=1', '"burst";r=2;t=0')
    assert minute.startswith('"minute";r=4;t=')
    answers = [http.get(f"{demo.url}/limits/ietf/t1/a", timeout=5) for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 429]
    assert answers[-1].headers["Retry-After"] in ("0", "1")
    time.sleep(1.0)
    after = [http.get(f"{demo.url}/limits/ietf/t1/a", timeout=5) for _ in range(3)]
    assert [r.status_code for r in after] == [200, 200, 429]  # the burst window reset; the minute ran out
    assert after[-1].headers["RateLimit"].split(", ")[1].startswith('"minute";r=0;t=')
    assert int(after[-1].headers["Retry-After"]) > 1
    report = admin(demo, "GET", "/admin/ratelimits")["tenants"]["t1"]
    assert report["admitted"] == 5 and report["breaches"] == {"burst": 1, "minute": 1}
    assert report["max_per_window"] == {"burst": 3, "minute": 5}


def test_legacy_ratelimit_headers(demo, http) -> None:
    admin(
        demo,
        "POST",
        "/admin/ratelimits",
        {"windows": [{"limit": 2, "seconds": 60}, {"limit": 50, "seconds": 3600}]},
    )
    answers = [http.get(f"{demo.url}/limits/legacy/anyone/x", timeout=5) for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 429]
    assert [r.headers["RateLimit-Remaining"] for r in answers] == ["1", "0", "0"]
    assert answers[0].headers["RateLimit-Limit"] == "2"
    assert answers[0].headers["RateLimit-Policy"] == "2;w=60, 50;w=3600"
    assert 0 <= int(answers[2].headers["RateLimit-Reset"]) <= 60


def test_limits_hold_at_the_server_under_concurrency(demo) -> None:
    admin(demo, "POST", "/admin/ratelimits", {"tenant": "busy", "windows": [{"limit": 20, "seconds": 60}]})
    early_in_window(60, 10)

    def call(_: int) -> int:
        return requests.get(f"{demo.url}/limits/ietf/busy/x", timeout=5).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(call, range(50)))
    assert (codes.count(200), codes.count(429)) == (20, 30)
    report = admin(demo, "GET", "/admin/ratelimits")["tenants"]["busy"]
    assert (report["admitted"], report["breaches"]) == (20, {"w60": 30})


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ({"windows": []}, "windows"),
        ({"windows": [{"limit": 0, "seconds": 1}]}, "windows[0].limit"),
        ({"windows": [{"limit": 1, "seconds": 0}]}, "windows[0].seconds"),
        ({"windows": [{"limit": 1, "seconds": 1}], "status": 500}, "status"),
        ({"windows": [{"limit": 1, "seconds": 1}], "secondary": {"limit": 1}}, "secondary.seconds"),
        ({"windows": [{"limit": 1, "seconds": 1}], "tenant": "a/b"}, "tenant"),
        ({"windows": [{"limit": 1, "seconds": 1}], "extra": 1}, "extra"),
    ],
)
def test_invalid_rate_limit_policies_are_400(demo, policy: dict[str, Any], field: str) -> None:
    response = requests.post(f"{demo.url}/admin/ratelimits", json=policy, timeout=5)
    assert (response.status_code, response.json()["field"]) == (400, field)


# --- async export jobs ------------------------------------------------------------------------


def test_export_job_lifecycle(demo, http) -> None:
    submitted = http.post(f"{demo.url}/exports", json={"rows": 3, "duration": 0.6, "pending": 0.2}, timeout=5)
    assert submitted.status_code == 202
    location = submitted.headers["Location"]
    assert location == submitted.json()["status_url"] == f"/exports/{submitted.json()['id']}"
    seen = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        poll = http.get(f"{demo.url}{location}", timeout=5)
        assert poll.status_code == 200
        status = poll.json()["status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        if status in ("succeeded", "failed"):
            assert "Retry-After" not in poll.headers
            break
        assert poll.headers["Retry-After"] == "1"
        early = http.get(f"{demo.url}{location}/result", timeout=5)
        if early.status_code == 200:  # the job finished between the two requests
            assert http.get(f"{demo.url}{location}", timeout=5).json()["status"] == "succeeded"
        else:
            assert (early.status_code, early.json()["error"]) == (409, "job_not_finished")
        time.sleep(0.05)
    assert seen == ["pending", "running", "succeeded"]
    result_url = poll.json()["result_url"]
    download = http.get(f"{demo.url}{result_url}", timeout=5)
    assert download.status_code == 200
    assert [row["row"] for row in download.json()["rows"]] == [1, 2, 3]
    jobs = admin(demo, "GET", "/admin/exports")["jobs"]
    assert jobs[0]["polls"] == demo.calls()["paths"][location] and jobs[0]["downloads"] >= 1


def test_failed_and_expired_jobs(demo, http) -> None:
    failing = http.post(
        f"{demo.url}/exports", json={"duration": 0.05, "fail": True, "expires_in": 0.3}, timeout=5
    )
    url = f"{demo.url}{failing.headers['Location']}"
    time.sleep(0.1)
    status = http.get(url, timeout=5).json()
    assert status["status"] == "failed" and status["error"]["code"] == "export_failed"
    result = http.get(f"{url}/result", timeout=5)
    assert (result.status_code, result.json()["error"]) == (409, "job_failed")
    time.sleep(0.3)
    gone = http.get(url, timeout=5)
    assert (gone.status_code, gone.json()["error"]) == (410, "job_expired")
    assert http.get(f"{url}/result", timeout=5).status_code == 410
    missing = http.get(f"{demo.url}/exports/exp_999999", timeout=5)
    assert (missing.status_code, missing.json()["error"]) == (404, "job_not_found")
    bad = http.post(f"{demo.url}/exports", json={"duration": -1}, timeout=5)
    assert (bad.status_code, bad.json()["field"]) == (400, "duration")


def test_export_submission_honours_idempotency_keys(demo, http) -> None:
    headers = {"Idempotency-Key": "export-1"}
    first = http.post(f"{demo.url}/exports", json={"rows": 2}, headers=headers, timeout=5)
    again = http.post(f"{demo.url}/exports", json={"rows": 2}, headers=headers, timeout=5)
    assert (first.status_code, again.status_code) == (202, 202)
    assert (
        again.headers["Location"] == first.headers["Location"]
        and again.headers["Idempotent-Replayed"] == "true"
    )
    assert len(admin(demo, "GET", "/admin/exports")["jobs"]) == 1


# --- HTTP caching -----------------------------------------------------------------------------


def test_max_age_etag_and_304(demo, http) -> None:
    url = f"{demo.url}/reference/countries"
    first = http.get(url, params={"max_age": 120}, timeout=5)
    assert first.status_code == 200
    assert first.headers["Cache-Control"] == "max-age=120"
    etag = first.headers["ETag"]
    assert etag.startswith('"countries-v1-')
    revalidated = http.get(url, params={"max_age": 120}, headers={"If-None-Match": etag}, timeout=5)
    assert revalidated.status_code == 304 and revalidated.content == b""
    assert (revalidated.headers["ETag"], revalidated.headers["Cache-Control"]) == (etag, "max-age=120")
    weak = http.get(url, headers={"If-None-Match": f'"other", W/{etag}'}, timeout=5)
    assert weak.status_code == 304  # If-None-Match uses the weak comparison
    assert http.get(url, headers={"If-None-Match": "*"}, timeout=5).status_code == 304
    admin(demo, "POST", "/admin/reference/countries")
    changed = http.get(url, headers={"If-None-Match": etag}, timeout=5)
    assert changed.status_code == 200 and changed.headers["ETag"] != etag and changed.json()["version"] == 2
    assert demo.calls()["paths"]["/reference/countries"] == 5


def test_no_cache_no_store_and_expires(demo, http) -> None:
    currencies = http.get(f"{demo.url}/reference/currencies", timeout=5)
    assert currencies.headers["Cache-Control"] == "no-cache"
    again = http.get(
        f"{demo.url}/reference/currencies", headers={"If-None-Match": currencies.headers["ETag"]}, timeout=5
    )
    assert again.status_code == 304
    rates = [http.get(f"{demo.url}/reference/rates", timeout=5) for _ in range(2)]
    assert all(r.headers["Cache-Control"] == "no-store" and "ETag" not in r.headers for r in rates)
    assert rates[0].json() != rates[1].json()
    holidays = http.get(f"{demo.url}/reference/holidays", params={"max_age": 30}, timeout=5)
    assert "Cache-Control" not in holidays.headers
    expires = parsedate_to_datetime(holidays.headers["Expires"]).timestamp()
    date = parsedate_to_datetime(holidays.headers["Date"]).timestamp()
    assert 29 <= expires - date <= 31
    assert http.get(f"{demo.url}/reference/nope", timeout=5).status_code == 404
    assert http.post(f"{demo.url}/reference/countries", timeout=5).status_code == 405


# --- error bodies and request ids -------------------------------------------------------------


def test_every_answer_has_a_request_id_and_errors_explain_themselves(demo, http) -> None:
    answers = [
        http.get(f"{demo.url}/echo/x", timeout=5),
        http.get(f"{demo.url}/no/such/route", timeout=5),
        http.delete(f"{demo.url}/payments/charges", timeout=5),
        http.post(f"{demo.url}/payments/charges", json={"order_id": "o"}, timeout=5),
        http.get(f"{demo.url}/status/503", timeout=5),
        http.get(f"{demo.url}/admin/calls", timeout=5),
    ]
    ids = [r.headers["X-Request-Id"] for r in answers]
    assert len(set(ids)) == len(ids) and all(i.startswith("req_") for i in ids)
    for response in answers[1:5]:
        assert response.status_code >= 400 and response.json()["error"]
    assert answers[3].json()["detail"] == "'amount_cents' is required"
    long = http.get(f"{demo.url}/status/500", params={"detail_bytes": 5000}, timeout=5)
    assert len(long.json()["detail"]) == 5000 and long.headers["X-Request-Id"].startswith("req_")

"""Bulk calls under per-item limiter and breaker keys (a key per tenant), against the demo API's
per-tenant limits (``/limits/github/<tenant>/...``), with both engines on both stores: each key
is limited and broken apart, one key's calls share one limiter and breaker; a downed tenant opens
only its own breaker; failed rows name their keys; a key template that does not render fails its
item's row, naming the item and the field (the builder and a YAML spec, through ``dag.test()``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import requests
from test_bulk_engines import engine  # noqa: F401 - the engine fixture (async, threads)

from api_orchestration import BreakerPolicy, Guard, RateLimit, RetryPolicy
from api_orchestration.calls.engines import call_concurrently, call_concurrently_async
from api_orchestration.calls.guard import KeyedGuards

TENANTS = ("t1", "t2", "t3")
ONCE = RetryPolicy(max_attempts=1)


def keyed_run(engine_name, backend, demo, count, *, concurrency=6, log=None, stats=None, **policies):
    """``count`` GETs, item i for tenant ``TENANTS[i % 3]`` under the keys ``gh:<tenant>``."""
    guards = KeyedGuards(
        Guard(backend=backend, limit_key="base", breaker_key="base", max_sleep=3600.0, **policies)
    )

    def request(i: int) -> dict:
        tenant = TENANTS[i % 3]
        url = f"{demo.url}/limits/github/{tenant}/repos"
        return {
            "method": "GET",
            "url": url,
            "params": {"i": i},
            "guard": guards.get(f"gh:{tenant}", f"gh:{tenant}"),
        }

    common = {"guard": guards.base, "concurrency": concurrency, "timeout": 5.0, "log": log}
    if engine_name == "async":
        rows = list(call_concurrently_async(count, request, stats=stats, **common))
    else:
        rows = list(call_concurrently(count, request, sessions=requests.Session, **common))
    return rows, guards


def test_each_tenant_is_limited_apart_and_no_limit_is_breached_at_the_server(engine, backend, demo):  # noqa: F811
    per_second = {"windows": [{"name": "second", "limit": 5, "seconds": 1}]}  # every tenant: 5 per 1 s window
    requests.post(f"{demo.url}/admin/ratelimits", json=per_second, timeout=5).raise_for_status()
    stats: dict = {}
    rows, guards = keyed_run(
        engine, backend, demo, 18, rate_limit=RateLimit(4, 1.0), retry=ONCE, stats=stats
    )  # 4/s: a window of 5 at the server absorbs a late arrival
    assert all(r["ok"] for r in rows), [r for r in rows if not r["ok"]][:3]
    report = requests.get(f"{demo.url}/admin/ratelimits", timeout=5).json()["tenants"]
    assert {t: (report[t]["admitted"], sum(report[t]["breaches"].values())) for t in TENANTS} == {
        t: (6, 0) for t in TENANTS
    }
    assert len(guards) == 3  # one guard, so one limiter, per key: its 6 calls shared it
    assert all(backend.limiter_status(f"gh:{t}").granted >= 6 for t in TENANTS)  # (+ new slots of late calls)
    assert backend.limiter_status("base") is None  # the template guard itself makes no call
    if engine == "async":  # admissions batched per key: fewer store operations than calls
        assert stats["store_operations"] < 18 + 3, stats


def test_a_downed_tenant_opens_only_its_own_breaker(engine, backend, demo, caplog):  # noqa: F811
    roomy = {"windows": [{"name": "second", "limit": 1000, "seconds": 1}]}  # only the fault refuses calls
    requests.post(f"{demo.url}/admin/ratelimits", json=roomy, timeout=5).raise_for_status()
    requests.post(f"{demo.url}/admin/faults", json={"path": "/limits/github/t2/", "down": True}, timeout=5)
    policy = BreakerPolicy(failure_rate=0.5, window_size=4, min_calls=4, open_seconds=30)
    log = logging.getLogger("test.bulk.keys")
    with caplog.at_level(logging.WARNING, logger="test.bulk.keys"):
        rows, _ = keyed_run(engine, backend, demo, 45, breaker=policy, retry=ONCE, log=log)
    by_tenant = {t: [r for r in rows if TENANTS[r["index"] % 3] == t] for t in TENANTS}
    assert all(r["ok"] for t in ("t1", "t3") for r in by_tenant[t])  # the others completed
    down = by_tenant["t2"]
    errors = [r["error"].split(":")[0] for r in down]
    sent = errors.count("HttpStatusError")
    assert policy.min_calls <= sent <= policy.min_calls + 6 and errors.count("CircuitOpenError") == 15 - sent
    assert all(
        (r["limit_key"], r["breaker_key"]) == ("gh:t2", "gh:t2") for r in down
    )  # the row names its keys
    assert demo.calls()["paths"]["/limits/github/t2/repos"] == sent  # nothing reached it once open
    assert [backend.breaker_status(f"gh:{t}").state for t in TENANTS] == ["closed", "open", "closed"]
    transitions = [r.getMessage() for r in caplog.records if r.getMessage().startswith("circuit ")]
    assert transitions == ["circuit 'gh:t2': closed -> open"]  # told under the key that opened


# -- through Airflow: a YAML spec's bulk step, the builder, the operator ----------------------------
SPEC = """
dag_id: spec_bulk_tenant_keys
defaults:
  conn_id: demo_api
  rate_limit: {permits: 4, per_seconds: 1}
  breaker: {failure_rate: 0.5, window_size: 4, min_calls: 4}
steps:
  - name: repos
    key: "gh:{{ item.tenant }}"
    call: {path: "/limits/github/{{ item.tenant | default('none') }}/repos"}
    bulk: {over: "conf.items", concurrency: 4, tolerate_failures: 1}
"""


@pytest.mark.usefixtures("airflow_db")
def test_a_spec_bulk_step_renders_its_key_per_item_and_names_the_item_that_did_not_render(demo):
    from test_dags import _register, _states
    from test_workflows import _xcom

    from api_orchestration.specs import load_text
    from api_orchestration.state import get_backend

    dag = load_text(SPEC, "spec_bulk_tenant_keys.yaml").dag
    assert dag.get_task("repos").rate_limit_key == "gh:{{ item.tenant }}"
    _register(dag)
    items = [{"tenant": "acme"}, {"tenant": "globex"}, {"name": "no tenant"}, {"tenant": "acme"}]
    run = dag.test(run_conf={"items": items})
    assert run.state == "success", _states(run)
    summary = _xcom(run, "repos")
    assert (summary["succeeded"], summary["failed"], summary["keys"]) == (3, 1, 2)
    rows = [json.loads(line) for line in Path(summary["path"]).read_text().splitlines()]
    bad = rows[2]
    assert not bad["ok"] and "limit_key" not in bad  # no call was made: it had no key
    assert bad["error"].startswith("ConfigurationError: bulk 'repos' item 2: rate_limit_key did not render")
    assert "'dict object' has no attribute 'tenant'" in bad["error"]
    backend = get_backend()
    assert backend.limiter_status("gh:acme").granted == 2 and backend.limiter_status("gh:globex").granted == 1
    assert backend.breaker_status("gh:acme") is not None and backend.limiter_status("gh:") is None
    assert demo.calls()["paths"].get("/limits/github/none/repos") is None

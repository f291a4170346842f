"""A small tour of ResilientHttpOperator against the demo API (``make run`` starts it on :8900).

- ``get_echo``: a GET under a shared rate limit (5 calls/s for every task on the key ``demo_tour``)
  and breaker.
- ``post_flaky``: a POST whose endpoint fails twice with 503; retried inside the task with backoff,
  always with the same ``Idempotency-Key``, so the server can de-duplicate.
- ``honour_retry_after``: answered 429 with ``Retry-After: 1`` once; the task waits as told (and the
  pause applies to every task using the ``demo_tour`` key).
- ``summary``: reads the three results from XCom.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, task

from api_orchestration import BreakerPolicy, RateLimit, ResilientHttpOperator, RetryPolicy

DEMO = "demo_api"  # Airflow Connection: http://127.0.0.1:8900 (make run defines it)
KEY = "demo_tour"  # the limiter and breaker key: one key, one policy (other DAGs use demo_api otherwise)
LIMIT = RateLimit(permits=5, per_seconds=1.0)
BREAKER = BreakerPolicy(failure_rate=0.5, window_size=20, min_calls=10, open_seconds=30)

with DAG(
    dag_id="resilient_call_example",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["api-orchestration", "example"],
    doc_md=__doc__,
) as dag:
    get_echo = ResilientHttpOperator(
        task_id="get_echo",
        http_conn_id=DEMO,
        endpoint="/echo/hello",
        query={"run": "{{ run_id }}"},
        rate_limit=LIMIT,
        rate_limit_key=KEY,
        breaker=BREAKER,
        breaker_key=KEY,
        response_filter=lambda r: {"path": r.json()["path"]},  # XCom keeps what summary needs
    )
    post_flaky = ResilientHttpOperator(
        task_id="post_flaky",
        http_conn_id=DEMO,
        method="POST",
        endpoint="/flaky/{{ run_id | urlencode }}?fail=2",
        json={"order": "{{ run_id }}", "amount_cents": 1250},
        rate_limit=LIMIT,
        rate_limit_key=KEY,
        breaker=BREAKER,
        breaker_key=KEY,
        retry=RetryPolicy(max_attempts=4, base_delay=0.2, max_delay=2.0),
    )
    honour_retry_after = ResilientHttpOperator(
        task_id="honour_retry_after",
        http_conn_id=DEMO,
        endpoint="/ratelimited/{{ run_id | urlencode }}?times=1&retry_after=1",
        rate_limit=LIMIT,
        rate_limit_key=KEY,
        breaker=BREAKER,
        breaker_key=KEY,
    )

    @task
    def summary(echo: dict, flaky: dict, limited: dict) -> dict:
        return {"echo_path": echo["path"], "flaky_calls": flaky["call"], "after_429_calls": limited["call"]}

    get_echo >> post_flaky >> honour_retry_after
    summary(get_echo.output, post_flaky.output, honour_retry_after.output)

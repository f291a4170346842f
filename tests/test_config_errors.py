"""Bad arguments fail at DAG parse time with errors that name the thing, the parameter and the fix."""

from __future__ import annotations

import pytest

import api_orchestration
from api_orchestration import BreakerPolicy, ConfigurationError, RateLimit, ResilientHttpOperator, RetryPolicy


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: RateLimit(0), "RateLimit: permits must be an integer >= 1, got 0"),
        (lambda: RateLimit(5, per_seconds=-1), "RateLimit: per_seconds must be a number > 0, got -1"),
        (lambda: RateLimit(5, burst=6), "RateLimit: burst must be an integer from 1 to permits (5), got 6"),
        (lambda: RateLimit(5, margin=0.9), "RateLimit: margin must be a fraction from 0 to 0.5, got 0.9"),
        (lambda: RateLimit("10"), "RateLimit: permits must be an integer >= 1, got '10'"),
        (
            lambda: BreakerPolicy(failure_rate=0),
            "BreakerPolicy: failure_rate must be a fraction in (0, 1], got 0",
        ),
        (
            lambda: BreakerPolicy(window_size=5, min_calls=6),
            "BreakerPolicy: min_calls must be an integer from 1 to window_size (5), got 6",
        ),
        (
            lambda: BreakerPolicy(half_open_calls=0),
            "BreakerPolicy: half_open_calls must be an integer >= 1, got 0",
        ),
        (
            lambda: BreakerPolicy(slow_call_seconds=0),
            "BreakerPolicy: slow_call_seconds must be None or a number of seconds > 0, got 0",
        ),
        (lambda: RetryPolicy(max_attempts=0), "RetryPolicy: max_attempts must be an integer >= 1, got 0"),
        (
            lambda: RetryPolicy(base_delay=5, max_delay=1),
            "RetryPolicy: max_delay must be a number of seconds >= base_delay (5), got 1",
        ),
        (
            lambda: RetryPolicy(retry_statuses={404, 503}),
            "RetryPolicy: retry_statuses may hold only 408, 429 and 5xx codes (4xx are never retried); remove [404]",
        ),
        (
            lambda: ResilientHttpOperator(task_id="t", endpoint="/x", method="FETCH"),
            "task 't': method must be one of GET",
        ),
        (
            lambda: ResilientHttpOperator(task_id="t", endpoint="/x", rate_limit=5),
            "task 't': rate_limit must be a RateLimit(permits, per_seconds, burst) or a non-empty list of them, got 5",
        ),
        (
            lambda: ResilientHttpOperator(task_id="t", endpoint="/x", on_circuit_open="wait"),
            "task 't': on_circuit_open must be 'fail' or 'defer', got 'wait'",
        ),
        (
            lambda: ResilientHttpOperator(task_id="t", endpoint="/x", timeout=0),
            "task 't': timeout must be seconds > 0 or a (connect, read) pair, got 0",
        ),
        (
            lambda: ResilientHttpOperator(task_id="t", endpoint="/x", json={}, data="a"),
            "task 't': json/data must not both be set",
        ),
        (
            lambda: ResilientHttpOperator(task_id="t", endpoint="/x", idempotency_key=True),
            "task 't': idempotency_key must be None (derived), False or a string",
        ),
    ],
)
def test_configuration_errors(build, message):
    with pytest.raises(ConfigurationError) as info:
        build()
    assert str(info.value).startswith(message), str(info.value)
    assert isinstance(info.value, ValueError)


def test_backoff_is_full_jitter_and_capped():
    import random

    policy = RetryPolicy(base_delay=1, max_delay=5, multiplier=2)
    rng = random.Random(7)
    samples = [policy.backoff(4, rng) for _ in range(2000)]  # cap = min(5, 1 * 2**3) = 5
    assert 0 <= min(samples) < 0.1 and 4.9 < max(samples) <= 5


def test_public_api_is_exactly_all():
    import inspect

    public = {n for n in dir(api_orchestration) if not n.startswith("_")}
    modules = {n for n in public if inspect.ismodule(getattr(api_orchestration, n))}
    assert public - modules == set(api_orchestration.__all__)
    for name in api_orchestration.__all__:
        assert getattr(api_orchestration, name).__doc__, f"{name} has no docstring"


def test_airflow_does_not_import_package_modules_as_plugins():
    """Airflow imports every .py under plugins/ by its bare name; the package must be ignored."""
    from airflow._shared.module_loading import find_path_from_directory
    from conftest import REPO

    found = list(find_path_from_directory(str(REPO / "plugins"), ".airflowignore", "glob"))
    packages = ("/api_orchestration/", "/api_orchestration_provider/")
    assert not [f for f in found if any(p in f for p in packages) and f.endswith(".py")], found

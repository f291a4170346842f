"""Metrics reach a real StatsD listener (a UDP socket in the test) from real calls to the demo API.

The calls run in a fresh Python process configured the Airflow way (``AIRFLOW__METRICS__STATSD_ON``,
``STATSD_HOST``/``PORT``), as a task process would be. Compensation and saga metrics from a real
worker are checked in ``e2e/test_status_ui.py``.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
import time

from conftest import REPO

CALLS = textwrap.dedent(
    """
    import sys
    import requests
    from api_orchestration import BreakerPolicy, CircuitOpenError, Guard, HttpStatusError, RateLimit, ResilientCaller, RetryPolicy
    from api_orchestration.state import backend_for_url

    demo, state = sys.argv[1:3]
    backend = backend_for_url(state)

    def caller(key, **guard):
        guard.setdefault("retry", RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.02))
        return ResilientCaller(requests.Session(), Guard(backend=backend, limit_key=key, breaker_key=key, **guard))

    caller("flaky").call("GET", f"{demo}/flaky/metrics?fail=1")         # 2 attempts, 1 retry, ok
    slow = caller("slow", rate_limit=RateLimit(5, per_seconds=1.0))      # the 2nd call waits ~0.2 s
    slow.call("GET", f"{demo}/echo/a"); slow.call("GET", f"{demo}/echo/b")
    down = caller("down", breaker=BreakerPolicy(min_calls=2, window_size=2, open_seconds=60),
                  retry=RetryPolicy(max_attempts=1))
    for _ in range(3):
        try:
            down.call("GET", f"{demo}/status/503")
        except (HttpStatusError, CircuitOpenError) as exc:
            print("RESULT", type(exc).__name__)
    caller("partner").call("GET", f"{demo}/ratelimited/metrics?times=1&retry_after=1")  # 429, pause, ok
    from api_orchestration.policy import CachePolicy
    ref = caller("ref", cache=CachePolicy(ttl=60))
    for name in ("countries", "countries", "currencies", "currencies", "rates"):  # stored, hit, stored, 304, no-store
        ref.call("GET", f"{demo}/reference/{name}")
    """
)


PYTHONPATH = os.pathsep.join([str(REPO / "plugins"), os.environ.get("PYTHONPATH", "")])


def test_calls_send_statsd_metrics(demo, tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.settimeout(0.2)
        env = {
            **os.environ,
            "PYTHONPATH": PYTHONPATH,
            "AIRFLOW__METRICS__STATSD_ON": "True",
            "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
            "AIRFLOW__METRICS__STATSD_PORT": str(listener.getsockname()[1]),
            "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
        }
        proc = subprocess.Popen(
            [sys.executable, "-c", CALLS, demo.url, f"sqlite:///{tmp_path}/state.db"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                lines += listener.recv(65535).decode().splitlines()
            except TimeoutError:
                if proc.poll() is not None:
                    break
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output
    results = [line.split()[1] for line in output.splitlines() if line.startswith("RESULT ")]
    assert results == ["HttpStatusError", "HttpStatusError", "CircuitOpenError"], output

    def count(name: str) -> int:
        return sum(
            int(line.split(":")[1].split("|")[0]) for line in lines if line.startswith(f"airflow.{name}:")
        )

    assert count("api_orchestration.call.ok.flaky") == 1
    assert count("api_orchestration.call.retry.flaky") == 1
    attempts = [line for line in lines if line.startswith("airflow.api_orchestration.call.attempt.flaky:")]
    assert len(attempts) == 2 and all(re.fullmatch(r".*:\d+\.\d+\|ms", a) for a in attempts), attempts
    waits = [float(line.split(":")[1].split("|")[0]) for line in lines if ".limiter.wait.slow:" in line]
    assert len(waits) == 1 and 150 < waits[0] < 260, lines  # ms: one slot of 1.02 s / 5
    assert count("api_orchestration.call.failed.down") == 2
    assert count("api_orchestration.breaker.open.down") == 1
    assert count("api_orchestration.breaker.rejected.down") == 1
    assert count("api_orchestration.limiter.paused.partner") == 1
    assert count("api_orchestration.call.ok.partner") == 1
    for what, n in (("hit", 1), ("stored", 2), ("revalidated", 1), ("not_stored", 1)):
        assert count(f"api_orchestration.cache.{what}.ref") == n, (what, lines)
    assert all(line.startswith("airflow.api_orchestration.") for line in lines), lines


def test_metrics_are_off_by_default(demo, tmp_path):
    """Without [metrics] settings nothing is built: the hooks return at once."""
    code = "from api_orchestration import metrics; metrics.retry('k'); print(metrics.emitter())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__METRICS__")} | {
        "PYTHONPATH": PYTHONPATH
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None"

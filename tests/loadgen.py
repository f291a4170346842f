"""A load-generating worker process: ``python -m loadgen '<json args>'`` prints a JSON result.

Used by the multi-process tests and by ``make bench``. Each worker is a separate OS process that
opens the shared state store itself, as Airflow task processes do.

modes:
- ``limiter``: until ``duration`` passes, take a permit for ``key`` (sleeping as told) and GET
  ``target`` (the demo API records the arrival time); ``windows`` (a list of RateLimit kwargs):
  several windows on the key instead of ``permits``/``per_seconds``.
- ``breaker``: make ``calls`` calls to ``target`` through the full call path (ResilientCaller),
  counting outcomes by error type.
- ``operator``: until ``duration`` passes, run ``ResilientHttpOperator.execute`` (a GET of
  ``target`` under ``RateLimit(permits, per_seconds)`` and the default ``BreakerPolicy()``), each
  time with a new hook, session and connection, as a new task would.
- ``oauth``: ``calls`` GETs of ``target`` (an endpoint needing a bearer token) through the call path
  with OAuth2 connection ``conn`` (a dict of Connection fields) shared through the store (``prime``:
  read the stored token before the start); counts
  outcomes and this process's token requests. ``engine``: ``requests`` (default) or ``async``.
- ``headers``: ``calls`` GETs of ``target`` (a demo ``/limits`` endpoint) with no limit of its own:
  only the server's rate-limit headers, shared as key pauses, hold the worker back.
- ``bulk``: POST ``calls`` times to ``target`` through bulk mode's asyncio engine (admissions in
  batches), ``concurrency`` in flight, under ``limit`` and/or ``policy``; counts outcomes.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

REAL_TIME = time.time


def _skew_clock(seconds: float) -> None:
    """Make this process's wall clock wrong by ``seconds`` (the store must not care)."""
    if seconds:
        time.time = lambda: REAL_TIME() + seconds  # type: ignore[assignment]


def _stdio_handshake() -> float:
    print("ready", flush=True)
    return float(sys.stdin.readline())


_handshake = _stdio_handshake  # a forked worker (fleet.run_workers) talks through its pipe instead


def _ready_then_wait_for_start() -> float:
    """Tell the parent we are imported and connected; it answers with the common start instant."""
    start_at = _handshake()
    time.sleep(max(0.0, start_at - REAL_TIME()))
    return start_at


def run_limiter(args: dict) -> dict:
    import requests

    from api_orchestration import RateLimit
    from api_orchestration.policy import rate_limits
    from api_orchestration.state import AdmissionRequest, backend_for_url

    backend = backend_for_url(args["state_url"])
    if "windows" in args:  # several windows on the key, held at once
        request = AdmissionRequest.of(
            args["key"],
            rate_limits([RateLimit(**w) for w in args["windows"]]),
            max_wait=60,
            lease_seconds=0.0,
        )
        acquire = lambda: backend.admit(request)  # noqa: E731
    else:
        limit = RateLimit(args["permits"], args["per_seconds"], burst=args.get("burst", 1))
        acquire = lambda: backend.limiter_acquire(args["key"], limit, max_wait=60)  # noqa: E731
    session = requests.Session()
    decisions: list[float] = []
    sent = 0
    backend.limiter_status(args["key"])  # connect before the start
    session.get(args["target"].rsplit("/", 2)[0] + "/health", timeout=10)
    end = _ready_then_wait_for_start() + args["duration"]
    while REAL_TIME() < end:
        t0 = time.perf_counter()
        decision = acquire()
        decisions.append(time.perf_counter() - t0)
        if decision.wait > 0:
            time.sleep(decision.wait)
        if REAL_TIME() >= end:
            break
        session.get(args["target"], timeout=10)
        sent += 1
    decisions.sort()
    return {"sent": sent, "decision_p50_ms": decisions[len(decisions) // 2] * 1000 if decisions else None}


def run_breaker(args: dict) -> dict:
    import requests

    from api_orchestration import (
        BreakerPolicy,
        CircuitOpenError,
        Guard,
        HttpCallError,
        ResilientCaller,
        RetryPolicy,
    )
    from api_orchestration.state import backend_for_url

    guard = Guard(
        backend=backend_for_url(args["state_url"]),
        limit_key=args["key"],
        breaker_key=args["key"],
        breaker=BreakerPolicy(**args["policy"]),
        retry=RetryPolicy(max_attempts=1),
    )
    caller = ResilientCaller(requests.Session(), guard, timeout=5)
    counts: dict[str, int] = {}
    end = _ready_then_wait_for_start() + args.get("duration", 3600)
    for _ in range(args["calls"]):
        if REAL_TIME() > end:
            break
        try:
            caller.call("GET", args["target"])
            kind = "ok"
        except CircuitOpenError:
            kind = "circuit_open"
        except HttpCallError as exc:
            kind = type(exc).__name__
        counts[kind] = counts.get(kind, 0) + 1
        time.sleep(args.get("pause", 0))
    caller.flush()
    return counts


def run_bulk(args: dict) -> dict:
    import requests

    from api_orchestration import BreakerPolicy, Guard, RateLimit, RetryPolicy
    from api_orchestration.calls.engines import call_concurrently_async
    from api_orchestration.state import backend_for_url

    backend = backend_for_url(args["state_url"])
    guard = Guard(
        backend=backend,
        limit_key=args["key"],
        rate_limit=RateLimit(**args["limit"]) if "limit" in args else None,
        breaker_key=args["key"],
        breaker=BreakerPolicy(**args["policy"]) if "policy" in args else None,
        retry=RetryPolicy(max_attempts=1),
        max_sleep=3600.0,
        max_in_flight=args.get("max_in_flight"),
    )
    backend.limiter_status(args["key"])  # connect before the start
    requests.get(args["target"].rsplit("/", 2)[0] + "/health", timeout=10)
    _ready_then_wait_for_start()
    rows = call_concurrently_async(
        args["calls"],
        lambda i: {"method": "POST", "url": args["target"], "json": {"i": i}},
        guard=guard,
        concurrency=args.get("concurrency", 8),
        timeout=5.0,
    )
    counts: dict[str, int] = {}
    for row in rows:
        kind = "ok" if row["ok"] else row["error"].split(":")[0]
        counts[kind] = counts.get(kind, 0) + 1
    return {**counts, "done_at": REAL_TIME()}


def run_oauth(args: dict) -> dict:
    import requests

    from api_orchestration import Guard, HttpCallError, ResilientCaller, RetryPolicy
    from api_orchestration.calls.engines import call_concurrently_async
    from api_orchestration.calls.oauth2 import config_from_connection
    from api_orchestration.calls.tokens import shared_tokens
    from api_orchestration.state import backend_for_url

    class Conn:
        def __init__(self, conn_id: str, extra: dict | None = None, **fields: str) -> None:
            self.conn_id, self.extra_dejson = conn_id, extra or {}
            self.host, self.login, self.password = (
                fields.get("host"),
                fields.get("login"),
                fields.get("password"),
            )

    backend = backend_for_url(args["state_url"])
    tokens = shared_tokens(config_from_connection(Conn(**args["conn"])), backend)
    guard = Guard(backend=backend, limit_key=args["key"], retry=RetryPolicy(max_attempts=1), tokens=tokens)
    backend.limiter_status(args["key"])  # connect before the start
    requests.get(args["target"].split("/oauth/")[0] + "/health", timeout=10)
    if args.get("prime"):  # hold the store's token already, as a worker that has made calls does
        tokens.authorize()
    _ready_then_wait_for_start()
    counts: dict[str, int] = {}
    if args.get("engine") == "async":
        rows = call_concurrently_async(
            args["calls"], lambda i: {"method": "GET", "url": args["target"]}, guard=guard,
            concurrency=args.get("concurrency", 8), timeout=5.0,
        )  # fmt: skip
        for row in rows:
            kind = "ok" if row["ok"] else row["error"].split(":")[0]
            counts[kind] = counts.get(kind, 0) + 1
    else:
        caller = ResilientCaller(requests.Session(), guard, timeout=5)
        for _ in range(args["calls"]):
            try:
                caller.call("GET", args["target"])
                kind = "ok"
            except HttpCallError as exc:
                kind = type(exc).__name__
            counts[kind] = counts.get(kind, 0) + 1
        caller.flush()
    return {**counts, "token_requests": tokens.fetched}


def run_headers(args: dict) -> dict:
    """``calls`` GETs of ``target`` with no limit of this worker's own: only the server's rate-limit
    headers (shared through the store as key pauses) hold it back."""
    import requests

    from api_orchestration import Guard, HttpCallError, ResilientCaller, RetryPolicy
    from api_orchestration.state import backend_for_url

    backend = backend_for_url(args["state_url"])
    guard = Guard(backend=backend, limit_key=args["key"], retry=RetryPolicy(max_attempts=5), max_sleep=60.0)
    caller = ResilientCaller(requests.Session(), guard, timeout=5)
    backend.limiter_status(args["key"])  # connect before the start
    requests.get(args["target"].split("/limits/")[0] + "/health", timeout=10)
    _ready_then_wait_for_start()
    counts: dict[str, int] = {}
    for _ in range(args["calls"]):
        try:
            caller.call("GET", args["target"])
            kind = "ok"
        except HttpCallError as exc:
            kind = type(exc).__name__
        counts[kind] = counts.get(kind, 0) + 1
    caller.flush()
    return counts


def run_operator(args: dict) -> dict:
    import logging
    import os

    from api_orchestration import BreakerPolicy, RateLimit, ResilientHttpOperator

    logging.getLogger("airflow.task").setLevel(logging.WARNING)
    os.environ["AIRFLOW__API_ORCHESTRATION__STATE_URL"] = args["state_url"]
    base, path = args["target"].split("/", 3)[2], "/" + args["target"].split("/", 3)[3]
    host, port = base.split(":")
    os.environ["AIRFLOW_CONN_LOADGEN_API"] = json.dumps(
        {"conn_type": "http", "host": host, "port": int(port)}
    )
    limit = RateLimit(args["permits"], args["per_seconds"])
    op = ResilientHttpOperator(
        task_id="call", http_conn_id="loadgen_api", endpoint=path, rate_limit=limit,
        rate_limit_key=args["key"], breaker=BreakerPolicy(), max_sleep=60,
    )  # fmt: skip
    from api_orchestration.state import get_backend

    get_backend().limiter_status(args["key"])  # connect before the start
    end = _ready_then_wait_for_start() + args["duration"]
    sent = 0
    while REAL_TIME() < end:
        op.execute({})  # type: ignore[arg-type]
        sent += 1
    return {"sent": sent}


MODES = {
    "limiter": run_limiter,
    "breaker": run_breaker,
    "bulk": run_bulk,
    "operator": run_operator,
    "oauth": run_oauth,
    "headers": run_headers,
}
# what every mode imports: a fork server imports them once (fleet.run_workers), not each worker
PRELOAD = (
    "loadgen", "requests", "aiohttp", "api_orchestration", "api_orchestration.state",
    "api_orchestration.calls.engines", "api_orchestration.calls.oauth2", "api_orchestration.calls.tokens",
)  # fmt: skip


def run(args: dict) -> dict:
    _skew_clock(args.get("clock_skew", 0.0))
    return MODES[args["mode"]](args)


def forked(args: dict, env: dict[str, str], conn: Connection) -> None:
    """A worker forked from the fork server: the parent's environment, the handshake and the result
    (or the error) through ``conn``."""
    global _handshake
    import os
    import traceback

    os.environ.clear()
    os.environ.update(env)
    quiet = os.open(os.devnull, os.O_WRONLY)  # log lines would reach the terminal: errors come through conn
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)

    def handshake() -> float:
        conn.send("ready")
        return float(conn.recv())

    _handshake = handshake
    try:
        conn.send(("ok", run(args)))
    except BaseException:  # the parent reports it
        conn.send(("error", traceback.format_exc()))


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)
    print(json.dumps(run(json.loads(sys.argv[1]))))


if __name__ == "__main__":
    main()

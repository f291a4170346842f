"""``make bench``: print the benchmark tables. Real processes, real demo API, real SQLite and Redis.

1. limiter fidelity: 8 OS processes hammer one key at 20 permits/s for 10 s, per backend, measured
   at the server (admitted, max in any 1-s window, utilisation, per-process spread, decision p50);
2. multi-window fidelity: 8 processes share one key with two windows (5 per 0.5 s, 12 per 3 s), the
   demo's ``/limits`` endpoint holding the same windows: admitted, the most calls in one window of
   each (the server's fixed windows / sliding windows from the arrivals), breaches, utilisation;
   then limiter decision latency in one process (p50, p99);
3. single-call operator fidelity: 8 processes running ``ResilientHttpOperator.execute`` (a new
   session and connection per call, as a task does) under ``RateLimit(20/s)`` and ``BreakerPolicy()``,
   measured at the server in sliding 1-s windows (breaches: calls beyond the limit in any window);
4. per-call overhead: 1,000 sequential GETs to a zero-latency loopback endpoint through the
   operator's call path (HttpHook session + limiter + breaker + retry bookkeeping) vs a plain
   ``requests.Session`` vs stock ``HttpHook.run``, as calls/s and ratios;
5. response cache: the same GET through the call path as a real call (no cache), a cache hit
   (``Cache-Control: max-age``) and a 304 revalidation (``no-cache`` + ``ETag``), per backend:
   latency p50/p99 and the calls that reached the server;
6. OAuth2 token single flight: 8 processes x 50 calls to the demo's bearer-protected API with a
   token the server expired (each worker meets a 401) and then with one the store holds as expired
   (each needs a new one first): token requests per expiry, counted at the demo's token endpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
for sub in ("plugins", "include", "tests"):
    sys.path.insert(0, str(REPO / sub))
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="apiorch_bench_"))

import requests  # noqa: E402
from fleet import run_workers, window_stats  # noqa: E402

from api_orchestration import BreakerPolicy, Guard, RateLimit, ResilientCaller, RetryPolicy  # noqa: E402
from api_orchestration.state import backend_for_url  # noqa: E402
from demo_services import DemoServer  # noqa: E402

REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def backends(tmp: str) -> dict[str, str]:
    return {
        "sqlite": f"sqlite:///{tmp}/bench-{uuid.uuid4().hex[:8]}.db",
        "redis": f"{REDIS}?prefix=apiorch-bench-{uuid.uuid4().hex[:8]}:",
    }


def table(title: str, header: list[str], rows: list[list]) -> None:
    cells = [header, *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for i, r in enumerate(cells):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def limiter_fidelity(
    demo: DemoServer, urls: dict[str, str], processes: int, permits: int, duration: float
) -> None:
    rows = []
    for name, url in urls.items():
        demo.reset()
        path = f"/echo/fidelity-{name}"
        args = [
            {"mode": "limiter", "state_url": url, "key": "fidelity", "permits": permits, "per_seconds": 1.0,
             "duration": duration, "target": demo.url + path}
            for _ in range(processes)
        ]  # fmt: skip
        start, results = run_workers(args, timeout=duration + 120)
        arrivals = demo.calls(path=path, arrivals=True)["arrivals"].get(path, [])
        stats = window_stats(arrivals, permits, 1.0, start, duration)
        sent = [r["sent"] for r in results]
        p50 = statistics.median(r["decision_p50_ms"] for r in results)
        rows.append([name, stats.admitted, f"{stats.max_in_window} (limit {permits})", f"{stats.utilisation:.3f}",
                     f"{min(sent)}-{max(sent)}", f"{p50:.3f}"])  # fmt: skip
    table(
        f"Limiter fidelity: {processes} processes, {permits} permits/s, {duration:.0f} s, measured at the server",
        [
            "backend",
            "admitted",
            "max in any 1 s window",
            "utilisation",
            "per-process spread",
            "decision p50 ms (contended)",
        ],
        rows,
    )


def operator_fidelity(
    demo: DemoServer, urls: dict[str, str], processes: int, permits: int, duration: float
) -> None:
    """Single-call operators (a new session and connection per call, default BreakerPolicy) in
    ``processes`` processes on one key: what reaches the server in any sliding 1-s window."""
    rows = []
    for name, url in urls.items():
        demo.reset()
        path = f"/echo/operator-fidelity-{name}"
        args = [
            {"mode": "operator", "state_url": url, "key": f"opfid-{name}", "permits": permits, "per_seconds": 1.0,
             "duration": duration, "target": demo.url + path}
            for _ in range(processes)
        ]  # fmt: skip
        start, results = run_workers(args, timeout=duration + 120)
        arrivals = demo.calls(path=path, arrivals=True)["arrivals"].get(path, [])
        stats = window_stats(arrivals, permits, 1.0, start, duration)
        breaches = max(0, stats.max_in_window - permits)
        sent = [r["sent"] for r in results]
        rows.append([name, stats.admitted, f"{stats.max_in_window} (limit {permits})", breaches,
                     f"{stats.utilisation:.3f}", f"{min(sent)}-{max(sent)}"])  # fmt: skip
    table(
        f"Single-call operators: {processes} processes, RateLimit({permits}/s) + BreakerPolicy(), "
        f"{duration:.0f} s, sliding 1-s windows at the server",
        [
            "backend",
            "calls",
            "max in any 1 s window",
            "breaches (goal 0)",
            "utilisation",
            "per-process spread",
        ],
        rows,
    )


def multi_window_fidelity(demo: DemoServer, urls: dict[str, str], processes: int, duration: float) -> None:
    """Two windows on one key (5 per 0.5 s and 12 per 3 s, bursts allowed), held by the demo server
    in fixed windows (429 on a breach): ``processes`` processes share a limiter with the same windows."""
    server = [{"name": "short", "limit": 5, "seconds": 0.5}, {"name": "long", "limit": 12, "seconds": 3}]
    mine = [
        {"permits": 5, "per_seconds": 0.5, "burst": 5, "margin": 0.05},
        {"permits": 12, "per_seconds": 3.0, "burst": 12, "margin": 0.05},
    ]
    rows = []
    for name, url in urls.items():
        demo.reset()
        tenant = f"windows-{name}"
        requests.post(f"{demo.url}/admin/ratelimits", json={"tenant": tenant, "windows": server}, timeout=5)
        path = f"/limits/ietf/{tenant}/x"
        args = [
            {"mode": "limiter", "state_url": url, "key": tenant, "windows": mine, "duration": duration,
             "target": demo.url + path}
            for _ in range(processes)
        ]  # fmt: skip
        start, _ = run_workers(args, timeout=duration + 120)
        report = requests.get(f"{demo.url}/admin/ratelimits", timeout=5).json()["tenants"][tenant]
        arrivals = demo.calls(path=path, arrivals=True)["arrivals"].get(path, [])
        short = window_stats(arrivals, 5, 0.5, start, duration)
        long = window_stats(arrivals, 12, 3.0, start, duration)
        ideal = 12 * duration / 3.0  # the long window binds
        peaks = report.get("max_per_window", {})
        rows.append([name, report["admitted"], f"{peaks.get('short', 0)} / {short.max_in_window} (limit 5)",
                     f"{peaks.get('long', 0)} / {long.max_in_window} (limit 12)",
                     sum(report["breaches"].values()), f"{len(arrivals) / ideal:.3f}"])  # fmt: skip
    table(
        f"Multi-window fidelity: {processes} processes, one key with 5 per 0.5 s and 12 per 3 s, "
        f"{duration:.0f} s, held by the server",
        [
            "backend",
            "admitted",
            "max per 0.5 s (fixed / sliding)",
            "max per 3 s (fixed / sliding)",
            "breaches (goal 0)",
            "utilisation of the 3 s window",
        ],
        rows,
    )


def decision_latency(urls: dict[str, str], n: int = 3000) -> dict[str, float]:
    rows, p50s = [], {}
    for name, url in urls.items():
        b = backend_for_url(url)
        limit = RateLimit(1_000_000, 1.0, burst=1)
        for _ in range(50):
            b.limiter_acquire("warm", limit, 60)
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            b.limiter_acquire("lat", limit, 60)
            samples.append((time.perf_counter() - t0) * 1000)
        samples.sort()
        p50s[name] = samples[n // 2]
        rows.append(
            [
                name,
                f"{samples[n // 2]:.3f}",
                f"{samples[int(n * 0.99)]:.3f}",
                {"sqlite": "0.3", "redis": "0.5"}[name],
            ]
        )
        b.clear()
    table(
        f"Limiter decision latency, one process, {n} decisions",
        ["backend", "p50 ms", "p99 ms", "goal p50 ms"],
        rows,
    )
    return p50s


def call_overhead(demo: DemoServer, urls: dict[str, str], n: int, repeats: int) -> None:
    from airflow.providers.http.hooks.http import HttpHook

    target = f"{demo.url}/echo/overhead"
    os.environ["AIRFLOW_CONN_BENCH_DEMO"] = json.dumps(
        {"conn_type": "http", "host": "127.0.0.1", "port": demo.port}
    )

    def plain() -> None:
        s = requests.Session()
        for _ in range(n):
            s.get(target).raise_for_status()

    def stock_hook() -> None:
        hook = HttpHook(method="GET", http_conn_id="bench_demo")
        for _ in range(n):
            hook.run("/echo/overhead")

    def ours(url: str):
        def run() -> None:
            hook = HttpHook(method="GET", http_conn_id="bench_demo")
            guard = Guard(
                backend=backend_for_url(url), limit_key="bench", rate_limit=RateLimit(1_000_000, 1.0),
                breaker_key="bench", breaker=BreakerPolicy(), retry=RetryPolicy(),
            )  # fmt: skip
            caller = ResilientCaller(hook.get_conn(), guard, timeout=(10, 60))
            for _ in range(n):
                caller.call("GET", target)
            caller.flush()

        return run

    cases = {"plain requests.Session": plain, "stock HttpHook.run": stock_hook}
    cases.update({f"ResilientHttpOperator call path ({name})": ours(url) for name, url in urls.items()})
    best: dict[str, float] = {}
    for _ in range(repeats):  # interleaved, best of N: the least disturbed run of each
        for label, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            best[label] = min(best.get(label, 1e9), time.perf_counter() - t0)
    base = best["plain requests.Session"]
    rows = [
        [
            label,
            f"{n / secs:,.0f}",
            f"{secs / n * 1000:.3f}",
            f"{secs / base:.2f}",
            "<= 1.20" if "call path" in label else "",
        ]
        for label, secs in best.items()
    ]
    table(
        f"Per-call overhead: {n} sequential GETs to a loopback endpoint, best of {repeats}",
        ["path", "calls/s", "ms/call", "ratio to plain", "goal"],
        rows,
    )


def token_single_flight(demo: DemoServer, urls: dict[str, str], processes: int = 8, calls: int = 50) -> None:
    from api_orchestration.calls.oauth2 import config_from_connection
    from api_orchestration.calls.tokens import SharedTokens, fingerprint

    class Conn:
        conn_id, host = "bench_oauth", f"{demo.url}/oauth/token"
        login, password, extra_dejson = "demo-client", "demo-secret", {}

    def token_requests() -> int:
        return requests.get(f"{demo.url}/admin/oauth", timeout=5).json()["token_requests"]

    rows = []
    for name, url in urls.items():
        backend = backend_for_url(url)
        SharedTokens(config_from_connection(Conn()), backend).authorize()
        args = {
            "mode": "oauth", "state_url": url, "key": "bench-oauth", "calls": calls,
            "target": f"{demo.url}/oauth/api/things",
            "conn": {"conn_id": Conn.conn_id, "host": Conn.host, "login": Conn.login, "password": Conn.password},
        }  # fmt: skip
        for how, engine in (("expired at the server (401)", "requests"), ("expired in the store", "async")):
            if how.endswith("(401)"):
                requests.post(f"{demo.url}/admin/oauth/expire", json={}, timeout=5)
            else:
                d = backend.token_lease(Conn.conn_id, "bench", 5.0, 60.0)
                entry = json.loads(d.entry)
                backend.token_store(
                    Conn.conn_id, "bench", d.entry, time.time() - 1, fingerprint(entry["access_token"])
                )
            before = token_requests()
            _, results = run_workers([{**args, "engine": engine}] * processes)
            ok = sum(r.get("ok", 0) for r in results)
            rows.append([name, how, engine, f"{ok}/{processes * calls}", token_requests() - before])
    table(
        f"OAuth2 token single flight: {processes} processes x {calls} calls, one expiry",
        ["backend", "token", "engine", "calls ok", "token requests"],
        rows,
    )


def cache_latency(demo: DemoServer, urls: dict[str, str], n: int) -> None:
    from api_orchestration.policy import CachePolicy

    cases = {
        "real call (no cache)": ("/reference/countries?max_age=60", False),
        "cache hit (max-age)": ("/reference/countries?max_age=60", True),
        "304 revalidation (no-cache, ETag)": ("/reference/currencies", True),
    }
    rows = []
    for name, url in urls.items():
        backend = backend_for_url(url)
        for label, (path, cached) in cases.items():
            policy = CachePolicy(ttl=600) if cached else None
            guard = Guard(backend=backend, limit_key=f"bench-cache-{uuid.uuid4().hex[:6]}", cache=policy)
            caller = ResilientCaller(requests.Session(), guard, timeout=(10, 60))
            caller.call("GET", f"{demo.url}{path}")  # warm: connection, and the entry stored
            demo.reset()
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                caller.call("GET", f"{demo.url}{path}")
                times.append(time.perf_counter() - t0)
            caller.flush()
            times.sort()
            served = demo.calls()["paths"].get(path.split("?")[0], 0)
            rows.append([name, label, f"{statistics.median(times) * 1000:.3f}",
                         f"{times[int(n * 0.99) - 1] * 1000:.3f}", f"{served} / {n}"])  # fmt: skip
    table(
        f"Response cache: {n} sequential GETs of one URL through the call path (loopback demo API)",
        ["backend", "case", "p50 ms", "p99 ms", "calls at the server"],
        rows,
    )


def quiet_call_logs(directory: str) -> None:
    """One log line per attempt is part of the measured path; send it to a file, not the screen."""
    log = logging.getLogger("api_orchestration")
    log.handlers[:] = [logging.FileHandler(f"{directory}/calls.log")]
    log.setLevel(logging.INFO)
    log.propagate = False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (3 s fidelity, 300 calls)")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="apiorch_bench_")
    urls = backends(tmp)
    quiet_call_logs(tmp)
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; redis {REDIS}")
    with DemoServer(port=0) as demo:
        limiter_fidelity(demo, urls, processes=8, permits=20, duration=3.0 if args.quick else 10.0)
        operator_fidelity(demo, urls, processes=8, permits=20, duration=3.0 if args.quick else 10.0)
        multi_window_fidelity(demo, urls, processes=8, duration=6.0 if args.quick else 15.0)
        decision_latency(urls)
        call_overhead(demo, urls, n=300 if args.quick else 1000, repeats=3 if args.quick else 5)
        cache_latency(demo, urls, n=300 if args.quick else 1000)
        token_single_flight(demo, urls)
    for url in urls.values():
        backend_for_url(url).clear()


if __name__ == "__main__":
    main()

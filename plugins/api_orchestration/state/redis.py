"""Distributed store: state in Redis, every decision one Lua script on the server's clock.

URL: ``redis://[:password@]host:port/db[?prefix=apiorch:]`` (``rediss://`` for TLS). The optional
``prefix`` namespaces every key, so several deployments (or test runs) can share one server.
Scripts live in ``state/lua/``, one per operation (each prefixed with ``prelude.lua``); requests
and replies are JSON with named fields, decoded in :meth:`RedisBackend._run`.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis

from api_orchestration.policy import BreakerPolicy
from api_orchestration.resilience import admission as adm
from api_orchestration.resilience.breaker import HOLD_SECONDS, BreakerDecision
from api_orchestration.resilience.kinds import BreakerDecisionKind, BreakerState, Refusal
from api_orchestration.resilience.policy_claims import CLAIM_TTL, ClaimResult
from api_orchestration.resilience.tokens import TokenDecision, TokenDecisionKind
from api_orchestration.state.base import (
    Admission,
    AdmissionRequest,
    Batch,
    BreakerStatus,
    CachePut,
    CacheStats,
    LimiterStatus,
    Snapshot,
    StateBackend,
    Transition,
    Verdict,
)

DEFAULT_PREFIX = "apiorch:"
LUA = Path(__file__).with_name("lua")
OPERATIONS = (
    "admit_many",
    "record",
    "pause",
    "reset",
    "cache_put",
    "token_lease",
    "token_store",
    "policy_claim",
)
MAX_WAIT = 1e12  # JSON has no infinity


@cache
def script_source(operation: str) -> str:
    """``prelude.lua`` followed by the operation's own file."""
    return (LUA / "prelude.lua").read_text() + "\n" + (LUA / f"{operation}.lua").read_text()


def split_prefix(url: str) -> tuple[str, str]:
    """Remove our ``prefix`` query parameter from a Redis URL; returns (url for redis-py, prefix)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((v for k, v in query if k == "prefix"), DEFAULT_PREFIX)
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefix


def _float(value: Any) -> float:
    return float(value) if value not in (None, "", b"") else 0.0


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []  # Lua's cjson encodes an empty table as {}


def _policy(policy: BreakerPolicy) -> list[Any]:
    p = policy
    return [
        p.failure_rate,
        p.window_size,
        p.min_calls,
        p.open_seconds,
        p.half_open_calls,
        p.half_open_timeout,
    ]


def _decision(d: dict[str, Any]) -> BreakerDecision:
    return BreakerDecision(
        bool(d["allowed"]), BreakerDecisionKind(d["kind"]), int(d["gen"]), BreakerState(d["state"]),
        d.get("lease", ""), float(d["reopen_at"]) if d.get("reopen_at") else None, float(d.get("wait") or 0),
    )  # fmt: skip


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis SCAN MATCH pattern."""
    return "".join("\\" + c if c in "\\*?[]" else c for c in text)


_LIMITER_FLOATS = ("tat", "last_slot", "paused_until", "last_retry_after", "limit_window", "period_start")
_LIMITER_INTS = ("granted", "leased", "limit_permits", "limit_burst", "period_count")
_BREAKER_INTS = ("gen", "trials_issued", "trial_successes", "trial_failures", "seq")
_BREAKER_FLOATS = ("opened_until", "half_open_since", "changed_at")


class RedisBackend(StateBackend):
    """Shared state in Redis for processes on any number of hosts (standalone or Sentinel)."""

    driver_errors = (redis.RedisError,)

    def __init__(
        self, url: str, *, socket_timeout: float = 5.0, clock: Callable[[], float] | None = None
    ) -> None:
        """``clock``: tests only; decisions then use it instead of the server's ``TIME``."""
        self.url, self.clock = url, clock
        client_url, self.prefix = split_prefix(url)
        self.client = redis.Redis.from_url(
            client_url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            decode_responses=True,
        )
        self._scripts = {op: self.client.register_script(script_source(op)) for op in OPERATIONS}
        self._local = threading.local()

    def _script_client(self) -> redis.Redis:
        """This thread's own connection for the scripts (one per thread and process, from the pool).

        A pooled command checks a connection out and back in (a lock and a readiness poll of the
        socket): about 50 us, a third of an admission's round trip. Every call is admitted, so the
        scripts keep one connection per thread; after a fork the child opens its own."""
        local, pid = self._local, os.getpid()
        if getattr(local, "pid", None) != pid:
            local.client = redis.Redis(
                connection_pool=self.client.connection_pool, single_connection_client=True
            )
            local.pid = pid
        return local.client

    def _key(self, kind: str, key: str) -> str:
        return f"{self.prefix}{kind}:{{{key}}}"  # hash tag: a key's hash and sets on one cluster slot

    def _run(self, operation: str, **request: Any) -> dict[str, Any]:
        """Run one script: the request as JSON (None values left out), the named reply decoded."""
        request["prefix"] = self.prefix
        if self.clock is not None:
            request["now"] = self.clock()
        body = json.dumps({k: v for k, v in request.items() if v is not None})
        return json.loads(self._scripts[operation](args=[body], client=self._script_client()))

    # -- admissions --------------------------------------------------------------------------------
    def admit_many(self, count: int, request: AdmissionRequest, verdicts: Sequence[Verdict] = ()) -> Batch:
        r = request
        lim = r.limit
        reply = self._run(
            "admit_many", count=count, limit_key=r.limit_key,
            limit=[lim.permits, lim.window, lim.interval, lim.burst] if lim else None,
            more=[[adm.window_key(r.limit_key, w), w.permits, w.window, w.interval, w.burst]  # type: ignore[arg-type]
                  for w in r.more_windows] if r.more_windows else None,
            breaker_key=r.breaker_key if r.has_breaker else None,
            breaker=_policy(r.breaker) if r.has_breaker else None,  # type: ignore[arg-type]
            max_in_flight=r.max_in_flight if r.has_bulkhead else None,
            max_wait=min(r.max_wait, MAX_WAIT) if math.isfinite(r.max_wait) else MAX_WAIT,
            lease_s=r.lease_seconds, hold_s=HOLD_SECONDS, full_s=adm.FULL_SECONDS,
            verdicts=[self._verdict(v) for v in verdicts],
        )  # fmt: skip
        paused = bool(reply["paused"])
        granted = tuple(
            Admission(
                True,
                "ok",
                float(g["wait"]),
                paused,
                _decision(g["decision"]) if g.get("decision") else None,
                g.get("bulkhead_lease", ""),
            )
            for g in _list(reply["granted"])
        )
        refused = None
        if reply["refused"]:
            x = reply["refused"]
            decision = _decision(x["decision"]) if x.get("decision") else None
            refused = Admission(False, Refusal(x["reason"]), float(x["wait"]), bool(x["paused"]), decision)
        recorded = tuple(Transition(b, a) for b, a in _list(reply["recorded"]))
        return Batch(granted, refused, recorded)

    @staticmethod
    def _verdict(v: Verdict) -> dict[str, Any]:
        r, d = v.request, v.breaker
        out: dict[str, Any] = {
            "limit_key": r.limit_key,
            "bulkhead_lease": v.bulkhead_lease,
            "failed": v.failed,
            "unused": True if v.unused else None,
        }
        if d is not None and r.has_breaker:
            out.update(
                breaker_key=r.breaker_key, breaker=_policy(r.breaker), kind=d.kind, gen=d.gen, lease=d.lease
            )  # type: ignore[arg-type]
        return {k: x for k, x in out.items() if x is not None}

    def record(self, verdict: Verdict) -> Transition:
        before, after = self._run("record", verdict=self._verdict(verdict))
        return Transition(before, after)

    # -- limiter and breaker -------------------------------------------------------------------------
    def limiter_pause(self, key: str, seconds: float) -> float:
        return float(self._run("pause", limit_key=key, seconds=seconds)["paused_until"])

    def limiter_status(self, key: str) -> LimiterStatus | None:
        return self.snapshot(keys=([key], [])).limiters.get(key)

    def breaker_status(self, key: str) -> BreakerStatus | None:
        return self.snapshot(keys=([], [key])).breakers.get(key)

    def breaker_reset(self, key: str) -> None:
        self._run("reset", breaker_key=key)

    # -- one key, one policy ------------------------------------------------------------------------------
    def policy_claims(
        self, claims: Sequence[tuple[str, str, str]], owner: str, ttl: float = CLAIM_TTL
    ) -> list[ClaimResult]:
        reply = self._run("policy_claim", claims=[list(c) for c in claims], owner=owner, ttl=ttl)
        return [ClaimResult(bool(r["ok"]), r["policy"], r["owner"]) for r in _list(reply["results"])]

    # -- shared OAuth2 tokens ------------------------------------------------------------------------
    def token_lease(
        self, name: str, holder: str, lease_seconds: float, margin: float, reject: str | None = None
    ) -> TokenDecision:
        reply = self._run(
            "token_lease", name=name, holder=holder, lease_s=lease_seconds, margin=margin, reject=reject
        )
        return TokenDecision(TokenDecisionKind(reply["kind"]), reply["entry"], float(reply["wait"]))

    def token_store(
        self, name: str, holder: str, entry: str, expires_at: float | None, fingerprint: str
    ) -> None:
        self._run(
            "token_store",
            name=name,
            holder=holder,
            entry=entry,
            expires_at=expires_at,
            fingerprint=fingerprint,
        )

    def token_release(self, name: str, holder: str) -> None:
        self._run("token_store", name=name, holder=holder)

    # -- status: read-only snapshot --------------------------------------------------------------------
    def _scan_keys(self, kind: str) -> list[str]:
        """Our keys of ``kind`` (``rl``, ``br``): names ``{prefix}{kind}:{<key>}`` (not their sets)."""
        pattern = _glob_escape(f"{self.prefix}{kind}:{{") + "*}"
        start = len(self.prefix) + len(kind) + 2
        names = list(self.client.scan_iter(match=pattern, count=500))
        return sorted({name[start:-1] for name in names})

    def snapshot(self, *, keys: tuple[list[str], list[str]] | None = None) -> Snapshot:
        """Every key's state (or only the given limiter and breaker keys)."""
        limit_keys, breaker_keys = (
            keys if keys is not None else (self._scan_keys("rl"), self._scan_keys("br"))
        )
        pipe = self.client.pipeline(transaction=False)
        pipe.time()
        for key in limit_keys:
            pipe.hgetall(self._key("rl", key))
        for key in breaker_keys:
            pipe.hgetall(self._key("br", key))
        (sec, usec), *hashes = pipe.execute()
        now = self.clock() if self.clock is not None else sec + usec / 1e6
        limiters = {k: h for k, h in zip(limit_keys, hashes[: len(limit_keys)], strict=True) if h}
        breakers = {k: h for k, h in zip(breaker_keys, hashes[len(limit_keys) :], strict=True) if h}
        pipe = self.client.pipeline(transaction=False)  # leases in flight, the slot log of bursty limiters
        for key in breakers:
            pipe.zcount(self._key("br", key) + ":z", f"({now!r}", "+inf")
        for key, h in limiters.items():
            pipe.zcount(self._key("rl", key) + ":f", f"({now!r}", "+inf")
            permits, burst = int(h.get("limit_permits") or 0), int(h.get("limit_burst") or 0)
            if burst > 1:
                pipe.zrevrange(self._key("rl", key) + ":z", permits - 1, permits - 1, withscores=True)
        replies = iter(pipe.execute())
        out_breakers = {
            key: BreakerStatus(
                key,
                now,
                BreakerState(raw.get("state", BreakerState.CLOSED)),
                outcomes=raw.get("outcomes", ""),
                **{n: int(raw.get(n) or 0) for n in _BREAKER_INTS},
                **{n: _float(raw.get(n)) for n in _BREAKER_FLOATS},
                in_flight=int(next(replies)),
            )
            for key, raw in breakers.items()
        }
        out_limiters = {}
        for key, raw in limiters.items():
            in_flight = int(next(replies))
            nth = None
            if int(raw.get("limit_burst") or 0) > 1:
                found = next(replies)
                nth = float(found[0][1]) if found else None
            out_limiters[key] = LimiterStatus(
                key, now, **{n: _float(raw.get(n)) for n in _LIMITER_FLOATS},
                **{n: int(raw.get(n) or 0) for n in _LIMITER_INTS}, nth_latest=nth, in_flight=in_flight,
            )  # fmt: skip
        return Snapshot(now, out_limiters, out_breakers)

    # -- the saga log -----------------------------------------------------------------------------------
    def saga_record(self, entry: dict[str, Any], keep: int = 100) -> None:
        name, body = f"{self.prefix}saga_outcomes", json.dumps(entry, default=str)
        pipe = self.client.pipeline(transaction=True)
        pipe.lpush(name, body)
        pipe.ltrim(name, 0, keep - 1)
        pipe.pexpire(name, 7 * 86400 * 1000)
        pipe.execute()

    def saga_recent(self, limit: int = 20) -> list[dict[str, Any]]:
        bodies = self.client.lrange(f"{self.prefix}saga_outcomes", 0, limit - 1)
        return [json.loads(body) for body in bodies]

    # -- the response cache (cache_put.lua) --------------------------------------------------------------
    def cache_get(self, scope: str, key: str) -> dict[str, Any] | None:
        body = self.client.get(self._key("ca", scope) + ":e:" + key)
        return json.loads(body) if body else None

    def cache_put(
        self,
        scope: str,
        key: str,
        entry: dict[str, Any],
        size: int,
        keep_seconds: float,
        max_total_bytes: int,
    ) -> CachePut:
        reply = self._run(
            "cache_put", scope=scope, key=key, body=json.dumps(entry), size=size, keep=keep_seconds,
            max_total=max_total_bytes,
        )  # fmt: skip
        return CachePut(bool(reply["stored"]), int(reply["evicted"]), int(reply["total"]))

    def cache_stats(self) -> list[CacheStats]:
        scopes = self._scan_keys("ca")
        (sec, usec) = self.client.time()
        now = self.clock() if self.clock is not None else sec + usec / 1e6
        pipe = self.client.pipeline(transaction=False)
        for scope in scopes:
            pipe.zrangebyscore(self._key("ca", scope) + ":z", f"({now!r}", "+inf")
        live = pipe.execute()
        pipe = self.client.pipeline(transaction=False)
        for scope, keys in zip(scopes, live, strict=True):
            pipe.hmget(self._key("ca", scope), keys) if keys else pipe.echo("")
        sizes = pipe.execute()
        return [
            CacheStats(scope, len(keys), sum(int(s or 0) for s in found))
            for scope, keys, found in zip(scopes, live, sizes, strict=True)
            if keys
        ]

    # -- the last run of each sync stream ------------------------------------------------------------
    def stream_record(self, key: str, entry: dict[str, Any]) -> None:
        self.client.hset(f"{self.prefix}stream_runs", key, json.dumps(entry, default=str))

    def stream_latest(self) -> list[dict[str, Any]]:
        runs = self.client.hgetall(f"{self.prefix}stream_runs")
        return [json.loads(runs[k]) for k in sorted(runs)]

    def clear(self) -> None:
        for name in self.client.scan_iter(match=_glob_escape(self.prefix) + "*", count=500):
            self.client.delete(name)

    def close(self) -> None:
        self.client.close()

"""The attempt flow: every decision of one guarded call, written once, doing no I/O itself.

A call is a generator (the httpx ``auth_flow`` pattern) that yields *commands* and receives their
results: :class:`Admit` (a limiter slot, bulkhead place and breaker permit, one store operation),
:class:`Sleep`, :class:`Send` (the request), :class:`Report` (a verdict for the breaker and the
bulkhead), :class:`Pause` (a 429's ``Retry-After`` for every caller of the key), and with a
:class:`~api_orchestration.policy.CachePolicy` :class:`CacheLookup` (before any admission: a hit
spends no permit and makes no call) and :class:`CacheStore` (after a storable response). The requests
driver (:mod:`.requests_driver`) and the aiohttp driver (:mod:`.aiohttp_driver`) are thin loops that
carry the commands out; they share everything here: the idempotency rules, admission and refusal
handling, the late-slot rule, classification, verdicts, ``Retry-After``, backoff, deferral and the
typed errors. A test drives the flow with scripted results and an explicit clock.

A driver runs a flow with :class:`Stepper`: on an exception while carrying out a command it throws
the exception into the flow, so the flow decides (a call killed mid-request is reported as failed).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from api_orchestration.calls import diagnostics
from api_orchestration.calls.events import (
    AttemptFinished,
    BreakerTransition,
    CacheResult,
    CacheUsed,
    Deferred,
    Events,
    Granted,
    KeyPaused,
    Next,
    Refused,
    SlotMissed,
    TokenRefused,
    VerdictNotRecorded,
)
from api_orchestration.calls.guard import Guard, OnCircuitOpen
from api_orchestration.errors import (
    CallTimeoutError,
    CircuitOpenError,
    HttpStatusError,
    PermanentHttpStatusError,
    StateBackendError,
    TransportError,
)
from api_orchestration.policy import CachePolicy, RateLimit
from api_orchestration.resilience import http_cache
from api_orchestration.resilience.admission import Admission, AdmissionRequest, Transition, Verdict
from api_orchestration.resilience.kinds import BreakerDecisionKind, OutcomeKind, Refusal
from api_orchestration.resilience.outcome import (
    Outcome,
    RetryAfter,
    classify_exception,
    classify_status,
    may_retry_method,
    retry_after_of,
)
from api_orchestration.resilience.ratelimit_headers import (
    PauseReason,
    RateLimitInfo,
    is_rate_limited,
    parse_rate_limit,
    pause_for,
)
from api_orchestration.state.records import CachePut

HOLD_DEFER_SECONDS = 5.0  # how long to defer when calls in flight (or half-open trials) block a call
MAX_RESLOTS = 3  # new slots a late call may take before it goes anyway (and says so)


class DeferralNeeded(Exception):
    """The next step is more than ``max_sleep`` away: defer ``seconds``, then resume at ``attempt``."""

    def __init__(self, seconds: float, reason: str, attempt: int) -> None:
        self.seconds, self.reason, self.attempt = seconds, reason, attempt
        super().__init__(f"wait {seconds:.2f} s ({reason}) before attempt {attempt}")


# -- commands and their results -------------------------------------------------------------------
@dataclass(frozen=True)
class Admit:
    """Ask the store for an admission (``slot_only``: a new limiter slot for a late call).
    Result: :class:`Admitted`."""

    slot_only: bool = False


@dataclass(frozen=True)
class Admitted:
    """An admission, when the deciding store operation was sent (the driver's monotonic clock) and
    the steady part of the store's round trip (the shortest seen)."""

    admission: Admission
    sent: float
    round_trip: float

    def lateness(self, now: float) -> float:
        """How late a call going out at ``now`` is for its slot, beyond the store's steady round trip."""
        return now - self.sent - self.admission.wait - self.round_trip

    def rebased(self, now: float) -> Admitted:
        """The same slot, its wait counted from ``now`` (an admission taken ahead, used later)."""
        wait = max(0.0, self.sent + self.admission.wait - now)
        return Admitted(
            replace(self.admission, wait=wait), self.sent + self.admission.wait - wait, self.round_trip
        )


def late_allowance(limit: RateLimit | None) -> float:
    """How late a call may go out after its slot: half the limit's margin (a later one could share a
    window with calls whose slots are a whole window after its)."""
    return math.inf if limit is None else limit.margin * limit.per_seconds / 2


def decision_instant(
    admission: Admission, local_clock: bool, asked: float, wall_now: float, now: float
) -> float:
    """When the store decided ``admission``, on the driver's monotonic clock (``now``, with
    ``wall_now`` the same instant on the wall clock): exact when the store decides on this host's
    clock; otherwise when it was asked (the earliest it could have decided), so that a slow answer
    counts against the slot and a late call takes a new one."""
    if local_clock and admission.decided_at:
        return now - (wall_now - admission.decided_at)
    return asked


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Authorize:
    """The ``Authorization`` for the next attempt from the guard's OAuth2 tokens (``reject``: the
    fingerprint of a token the API refused). Result: an object with ``header`` and ``fingerprint``."""

    reject: str | None = None


@dataclass(frozen=True)
class Send:
    """Send the request, with ``headers`` added (the ``Authorization`` of OAuth2, a revalidation's
    ``If-None-Match``). Result: :class:`Sent`."""

    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class Sent:
    """What came back: a response (anything with ``status_code`` and ``headers``), or an error
    (``timeout`` says whether it was a timeout); ``elapsed`` seconds."""

    response: Any
    error: Exception | None
    timeout: bool
    elapsed: float


@dataclass(frozen=True)
class Report:
    """Record a finished call's verdict. ``urgent``: record it now (a retry follows); otherwise the
    driver may send it with its next admission. Result: the breaker's :class:`Transition` or None."""

    verdict: Verdict
    urgent: bool


@dataclass(frozen=True)
class ServerBudget:
    """What a response's rate-limit headers say is left in the server's tightest window (shared
    by every client of the API). A driver that takes admissions ahead stops while it runs low."""

    remaining: int
    limit: int | None


@dataclass(frozen=True)
class Pause:
    """Pause the limiter key for every caller (a 429's ``Retry-After``)."""

    seconds: float


@dataclass(frozen=True)
class CacheLookup:
    """Read the call's entry from the shared cache. Result: :class:`CacheFound`."""

    scope: str
    key: str


@dataclass(frozen=True)
class CacheFound:
    """The stored entry (None: none), and the driver's way to turn an entry into its response type
    (a ``requests.Response`` or an aiohttp driver ``Reply``; no I/O)."""

    entry: http_cache.CacheEntry | None
    respond: Callable[[http_cache.CacheEntry], Any]


@dataclass(frozen=True)
class CacheStore:
    """Store ``entry`` under the key for ``keep`` seconds, the scope kept under ``max_total_bytes``.
    Result: the store's :class:`~api_orchestration.state.records.CachePut`."""

    scope: str
    key: str
    entry: http_cache.CacheEntry
    keep: float
    max_total_bytes: int


Command = Admit | Sleep | Authorize | Send | Report | ServerBudget | Pause | CacheLookup | CacheStore
Flow = Generator[Command, Any, Any]


@dataclass(frozen=True)
class HttpRequest:
    """One request as a driver sends it (``idempotency_key``, if any, goes in ``idempotency_header``)."""

    method: str
    url: str
    params: Mapping[str, Any] | None = None
    json: Any = None
    data: Any = None
    headers: Mapping[str, str] | None = None
    idempotency_key: str | None = None
    idempotency_header: str = "Idempotency-Key"

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", self.method.upper())

    @property
    def all_headers(self) -> dict[str, str]:
        headers = dict(self.headers or {})
        if self.idempotency_key:
            headers[self.idempotency_header] = self.idempotency_key
        return headers

    @property
    def has_body(self) -> bool:
        return self.method not in ("GET", "HEAD")


@dataclass(frozen=True)
class CallInfo:
    """What the flow needs to know of the request: its method, its URL with secrets redacted, its
    idempotency key, and the raw URL forms to redact from error texts."""

    method: str
    safe_url: str
    idempotency_key: str | None = None
    raw_urls: tuple[str, ...] = ()  # the first is the full URL (the cache's default key)
    # as sent (the cache's Vary, Authorization and credential rules); may hold credentials: not shown
    request_headers: Mapping[str, str] | None = field(default=None, repr=False)
    cache_key: str | None = None  # the rendered CachePolicy.key (None: the method and full URL)

    @property
    def retry_ok(self) -> bool:
        return may_retry_method(self.method, self.idempotency_key)


@dataclass
class _Waits:
    parts: list[tuple[float, str]] = field(default_factory=list)

    def add(self, seconds: float, why: str) -> None:
        if seconds > 0.0005:
            self.parts.append((seconds, why))


def attempt_flow(
    call: CallInfo,
    guard: Guard,
    request: AdmissionRequest,
    events: Events,
    clock: Callable[[], float],
    first_attempt: int = 1,
    wall: Callable[[], float] = time.time,
) -> Flow:
    """The call: served from the shared cache (with ``guard.cache``), else attempts until one
    succeeds (returned: the response), the policy gives up (a typed error), or a wait is longer than
    ``guard.max_sleep`` (:class:`DeferralNeeded`). ``clock`` is monotonic (slots), ``wall`` is unix
    time (cache freshness, rate-limit resets; shared by every worker)."""
    policy = guard.retry
    max_attempts = policy.max_attempts if call.retry_ok else 1
    attempt, sent_calls, waits = first_attempt, 0, _Waits()
    auth, reject, reauthorized = None, None, False
    cache = _Cache.of(call, guard)
    found: CacheFound | None = None
    if cache is not None:
        found = yield CacheLookup(cache.scope, cache.key)
        decision = http_cache.lookup(found.entry, cache.request_headers, now=wall())
        if decision == http_cache.CacheLookup.FRESH and found.entry is not None:
            now, entry = wall(), found.entry
            fresh_for = http_cache.remaining_freshness(entry, now)
            events.publish(cache.event(call, CacheResult.HIT, age=now - entry.stored_at, fresh_for=fresh_for))
            return found.respond(entry)
        if decision != http_cache.CacheLookup.REVALIDATE:
            found = None
    while True:
        conditional = http_cache.conditional_headers(found.entry) if found and found.entry else {}
        if guard.tokens is not None:  # before admission: a token request must not make a slot late
            auth = yield Authorize(reject)
        admitted = yield from _admit(guard, events, attempt, waits, sent_calls)
        admission = admitted.admission
        try:
            yield from _until_slot(guard, events, clock, admitted, attempt, waits, sent_calls)
            sent: Sent = yield Send(
                tuple(conditional.items()) + ((("Authorization", auth.header),) if auth is not None else ())
            )
        except BaseException:  # killed mid-call: the effect is unknown, count a failure
            yield from _report(guard, events, Verdict.of(request, admission, True), urgent=True, calls=1)
            raise
        sent_calls += 1
        if (
            auth is not None
            and not reauthorized
            and sent.response is not None
            and sent.response.status_code == 401
        ):
            # the token was refused (expired early, revoked): one new token, one retry; not a failure
            reauthorized, reject = True, auth.fingerprint
            yield from _report(guard, events, Verdict.of(request, admission, False), urgent=True, calls=1)
            events.publish(TokenRefused(guard.limit_key, guard.tokens.token_key, attempt))  # type: ignore[union-attr]
            continue
        limits, throttled, now = None, False, wall()
        if sent.response is not None:
            limits = _limits(sent.response, now)
            throttled = sent.response.status_code == 403 and is_rate_limited(limits)
            # a rate-limit 403 (GitHub's secondary limit) is a 429 by another name: retried, not permanent
            outcome = classify_status(429 if throttled else sent.response.status_code, policy)
            if limits.remaining is not None:
                yield ServerBudget(limits.remaining, limits.limit)
        else:
            outcome = classify_exception(sent.timeout, policy)
        will_retry = not outcome.ok and outcome.retryable and attempt < max_attempts
        slow = guard.breaker.slow_call_seconds if guard.breaker else None
        failed = outcome.breaker_failure or bool(slow and sent.elapsed >= slow)
        yield from _report(guard, events, Verdict.of(request, admission, failed), urgent=will_retry, calls=1)
        retry_after = None
        if sent.response is not None:
            retry_after = retry_after_of(sent.response.status_code, sent.response.headers, policy)
            if (retry_after is None or not retry_after.pause_key) and limits is not None:
                retry_after = _header_pause(limits, throttled, policy, now) or retry_after
            if retry_after is not None and retry_after.pause_key:
                yield Pause(retry_after.seconds)
                events.publish(KeyPaused(guard.limit_key, retry_after.seconds))
        error_text = _redacted(sent.error, call.raw_urls)
        response = sent.response
        request_id = body = None
        if response is not None:
            request_id = diagnostics.request_id_of(response.headers)
            if not outcome.ok or guard.log_response:
                body = diagnostics.body_snippet(response)
        finished = dict(
            method=call.method, url=call.safe_url, limit_key=guard.limit_key, number=attempt,
            max_attempts=max_attempts, status=response.status_code if response is not None else None,
            error=error_text or None, elapsed=sent.elapsed, waits=tuple(waits.parts),
            request_id=request_id, body=body,
        )  # fmt: skip
        if outcome.ok:
            events.publish(AttemptFinished(**finished, next=Next.DONE))
            if cache is None:
                return response
            if found is not None and found.entry is not None and response.status_code == 304:
                try:
                    entry = http_cache.refreshed(
                        found.entry, response.headers, now=wall(), ttl=cache.policy.ttl
                    )
                except ValueError as exc:  # the 304 validates another response: fetch it unconditionally
                    events.publish(cache.event(call, CacheResult.NOT_STORED, detail=str(exc)))
                    found, attempt, waits = None, attempt + 1, _Waits()
                    max_attempts = max(max_attempts, attempt)
                    continue
                yield from _cache_store(cache, call, events, entry, wall(), CacheResult.REVALIDATED)
                return found.respond(entry)
            yield from _cache_response(cache, call, events, response, wall())
            return response
        if not will_retry:
            unkeyed = not call.retry_ok and outcome.retryable
            events.publish(AttemptFinished(**finished, next=Next.GIVE_UP, unkeyed=unkeyed))
            seconds = retry_after.seconds if retry_after else None
            raise _error(call, attempt, outcome, sent, error_text, seconds, request_id, body)
        if retry_after is not None and policy.respect_retry_after:
            delay, why = retry_after.seconds, "Retry-After"
        else:
            delay, why = policy.backoff(attempt), "backoff"
        events.publish(AttemptFinished(**finished, next=Next.RETRY, delay=delay, why=why))
        attempt, waits = attempt + 1, _Waits()
        if delay > guard.max_sleep:
            raise _deferral(guard, events, delay, why, attempt)
        yield Sleep(delay)
        waits.add(delay, f"for {why}")


def _limits(response: Any, now: float) -> RateLimitInfo:
    """What the response's rate-limit headers say (a 403's body may say it is a rate limit)."""
    body = None
    if response.status_code == 403:
        try:
            body = response.text[:2000]
        except Exception:
            body = None
    return parse_rate_limit(response.headers, status=response.status_code, now=now, body=body)


def _header_pause(info: RateLimitInfo, throttled: bool, policy: Any, now: float) -> RetryAfter | None:
    """A pause of the key for every caller from the rate-limit headers: an exhausted window
    (``X-RateLimit-Remaining: 0``, ``RateLimit: r=0``) until its reset, on a success too; a
    rate-limit 403 for its ``Retry-After`` (or GitHub's default minute). Capped at
    ``max_retry_after``; nothing when the policy does not respect the server's timing."""
    if not policy.respect_retry_after:
        return None
    pause = pause_for(info, now=now)
    if not pause or (pause.reason != PauseReason.EXHAUSTED and not throttled):
        return None
    return RetryAfter(min(pause.seconds, policy.max_retry_after), True)


@dataclass(frozen=True)
class _Cache:
    """The cache settings of one call: where its entry lives, and the headers its request carries."""

    policy: CachePolicy
    scope: str
    key: str
    request_headers: Mapping[str, str]

    @classmethod
    def of(cls, call: CallInfo, guard: Guard) -> _Cache | None:
        """None when the call is not cached (no policy, or a method the policy does not cache)."""
        policy = guard.cache
        if policy is None or call.method not in policy.methods:
            return None
        headers = dict(call.request_headers or {})
        text = f"{call.method} {call.cache_key if call.cache_key is not None else call.raw_urls[0]}"
        token_source = guard.tokens.token_key if guard.tokens is not None else None
        if credential := http_cache.credential_partition(headers, token_source):
            text += f"\n{credential}"  # one credential's entries are never served to another
        key = hashlib.sha256(text.encode()).hexdigest()[:40]  # no URL (or secret in it) in the store's keys
        return cls(policy, guard.limit_key, key, headers)

    def event(self, call: CallInfo, result: CacheResult, **fields: Any) -> CacheUsed:
        return CacheUsed(call.method, call.safe_url, self.scope, result, **fields)


def _cache_response(cache: _Cache, call: CallInfo, events: Events, response: Any, now: float) -> Flow:
    """Store a successful response if HTTP caching rules and the policy allow it."""
    p = cache.policy
    verdict = http_cache.store_decision(
        call.method, response.status_code, cache.request_headers, response.headers, ttl=p.ttl,
        methods=p.methods, now=now, per_credential=True,
    )  # fmt: skip
    if verdict != http_cache.StoreVerdict.STORE:
        events.publish(cache.event(call, CacheResult.NOT_STORED, detail=str(verdict)))
        return
    entry = http_cache.entry_from_response(
        response.status_code, cache.request_headers, list(response.headers.items()), response.content,
        now=now, ttl=p.ttl,
    )  # fmt: skip
    yield from _cache_store(cache, call, events, entry, now, CacheResult.STORED)


def _cache_store(
    cache: _Cache,
    call: CallInfo,
    events: Events,
    entry: http_cache.CacheEntry,
    now: float,
    result: CacheResult,
) -> Flow:
    """Store ``entry``; a store failure is logged, not raised (the call was made, its result stands)."""
    p, fresh_for = cache.policy, http_cache.remaining_freshness(entry, now)
    if entry.size > p.max_entry_bytes:
        detail = f"{entry.size} bytes is more than max_entry_bytes ({p.max_entry_bytes})"
        events.publish(cache.event(call, CacheResult.NOT_STORED, size=entry.size, detail=detail))
        return
    keep = fresh_for + (p.ttl if entry.etag or entry.last_modified else 0.0)  # stale ones kept to revalidate
    try:
        put: CachePut = yield CacheStore(cache.scope, cache.key, entry, keep, p.max_total_bytes)
    except StateBackendError as exc:
        events.publish(cache.event(call, CacheResult.NOT_STORED, detail=exc.cause_text))
        return
    if not put.stored:
        events.publish(
            cache.event(call, CacheResult.NOT_STORED, size=entry.size, detail="larger than max_total_bytes")
        )
        return
    detail = (
        f"{put.evicted} older entries evicted (max_total_bytes {p.max_total_bytes})" if put.evicted else ""
    )
    events.publish(cache.event(call, result, fresh_for=fresh_for, size=entry.size, detail=detail))


def _admit(
    guard: Guard, events: Events, attempt: int, waits: _Waits, sent_calls: int, slot_only: bool = False
) -> Generator[Command, Any, Admitted]:
    """Ask until granted; sleep through short holds; raise on long waits and refusals."""
    held = 0.0
    while True:
        try:
            admitted: Admitted = yield Admit(slot_only)
        except StateBackendError as exc:
            raise exc.after_calls(sent_calls) from exc.__cause__
        admission = admitted.admission
        _transition(guard, events, admission.recorded)
        if admission.granted:
            if not slot_only:
                waits.add(held, f"for calls in flight on {guard.breaker_key or guard.limit_key!r}")
                trial = admission.breaker is not None and admission.breaker.kind == BreakerDecisionKind.TRIAL
                events.publish(Granted(guard.limit_key, guard.breaker_key, admission.wait, trial))
            why = "Retry-After pause" if admission.paused else "rate limit"
            waits.add(admission.wait, f"for {why} on {guard.limit_key!r}")
            return admitted
        pause = _refused(guard, events, admission, attempt, held)
        yield Sleep(pause)
        held += pause


def _refused(guard: Guard, events: Events, admission: Admission, attempt: int, held: float) -> float:
    """A refusal: seconds to wait before asking again, else raises DeferralNeeded or CircuitOpenError."""
    g, reason = guard, admission.reason
    events.publish(Refused(g.limit_key, g.breaker_key, reason, admission.wait))
    if reason == Refusal.DEFER:
        why = "Retry-After pause" if admission.paused else "rate limit"
        raise _deferral(g, events, admission.wait, f"{why} on {g.limit_key!r}", attempt)
    if reason in (Refusal.HOLD, Refusal.FULL):
        if held + admission.wait <= g.max_sleep:
            return admission.wait
        what = (
            f"circuit {g.breaker_key!r}" if reason == Refusal.HOLD else f"key {g.limit_key!r} (max_in_flight)"
        )
        raise _deferral(g, events, HOLD_DEFER_SECONDS, f"calls in flight on {what}", attempt)
    if g.on_circuit_open == OnCircuitOpen.DEFER:  # open or busy (half-open, trials taken)
        seconds = admission.wait if reason == Refusal.OPEN else HOLD_DEFER_SECONDS
        raise _deferral(g, events, max(seconds, 0.0), f"circuit {g.breaker_key!r} {reason}", attempt)
    reopen_at = admission.breaker.reopen_at if admission.breaker else None
    raise CircuitOpenError(g.breaker_key, reopen_at, str(reason))


def _deferral(guard: Guard, events: Events, seconds: float, why: str, attempt: int) -> DeferralNeeded:
    events.publish(Deferred(guard.limit_key, seconds, why, attempt))
    return DeferralNeeded(seconds, why, attempt)


def _until_slot(
    guard: Guard,
    events: Events,
    clock: Callable[[], float],
    admitted: Admitted,
    attempt: int,
    waits: _Waits,
    sent_calls: int,
) -> Generator[Command, Any, None]:
    """Sleep until the slot, which lies between ``sent + wait`` and the answer's arrival plus
    ``wait``. Every call is late by the steady part of the store's round trip; one later than that
    by more than half the limit's margin (its process stalled: a busy machine, a long GC, a slow
    first request) could share a window with calls whose slots are a whole window after its, so it
    takes a new slot (keeping its breaker permit and bulkhead place) instead of going out."""
    limit, key = guard.shortest_window, guard.limit_key
    wait = admitted.admission.wait
    for _ in range(MAX_RESLOTS):
        if wait > 0:
            yield Sleep(wait)
        late = admitted.lateness(clock())
        if late <= late_allowance(limit):
            return
        admitted = yield from _admit(guard, events, attempt, _Waits(), sent_calls, slot_only=True)
        wait = admitted.admission.wait
        waits.add(wait, f"for a new slot on {key!r} (the first was missed by {late * 1000:.0f} ms)")
    if wait > 0:
        yield Sleep(wait)
    events.publish(SlotMissed(key, MAX_RESLOTS))


def _report(
    guard: Guard, events: Events, verdict: Verdict | None, *, urgent: bool, calls: int
) -> Generator[Command, Any, None]:
    """Report a verdict; a store failure here is logged, never raised: the call was made."""
    if verdict is None:
        return
    try:
        transition = yield Report(verdict, urgent)
    except StateBackendError as exc:
        events.publish(VerdictNotRecorded(guard.breaker_key or guard.limit_key, calls, exc.cause_text))
        return
    _transition(guard, events, transition)


def _transition(guard: Guard, events: Events, transition: Transition | None) -> None:
    if transition is not None and transition.changed:
        events.publish(BreakerTransition(guard.breaker_key, transition.before, transition.after))


def _redacted(error: Exception | None, raw_urls: tuple[str, ...]) -> str:
    """The error's text with the request's URL forms (which may carry secrets) redacted."""
    if error is None:
        return ""
    from api_orchestration.redaction import redact_url

    text = f"{type(error).__name__}: {error}"
    for raw in raw_urls:
        if raw:
            text = text.replace(raw, redact_url(raw))
    return text


def _error(
    call: CallInfo,
    attempt: int,
    outcome: Outcome,
    sent: Sent,
    error_text: str,
    retry_after: float | None,
    request_id: str | None = None,
    body: str | None = None,
) -> Exception:
    if sent.response is not None:
        cls = HttpStatusError if (outcome.breaker_failure or outcome.retryable) else PermanentHttpStatusError
        return cls(
            method=call.method,
            url=call.safe_url,
            status=sent.response.status_code,
            response=sent.response,
            retry_after=retry_after,
            attempts=attempt,
            request_id=request_id,
            body=body,
        )
    cls_t = CallTimeoutError if outcome.kind == OutcomeKind.TIMEOUT else TransportError
    # no __cause__: the client's exception text holds the raw URL; ``error_text`` is its redacted text
    return cls_t(
        f"{call.method} {call.safe_url} failed after {attempt} attempt(s): {error_text}",
        method=call.method,
        url=call.safe_url,
        attempts=attempt,
    )


class Stepper:
    """Advances a flow for a driver: ``next()`` gives the next command (None once the flow is over,
    its value then in ``result``); the driver reports how the command went with ``succeeded`` or
    ``failed`` (an exception is thrown into the flow, which decides)."""

    def __init__(self, flow: Flow) -> None:
        self._flow, self.result = flow, None
        self._outcome: tuple[bool, Any] = (True, None)

    def succeeded(self, value: Any) -> None:
        self._outcome = (True, value)

    def failed(self, error: BaseException) -> None:
        self._outcome = (False, error)

    def next(self) -> Command | None:
        ok, value = self._outcome
        try:
            return self._flow.send(value) if ok else self._flow.throw(value)
        except StopIteration as done:
            self.result = done.value
            return None

"""The resilient call path: limiter -> breaker -> HTTP attempt -> verdict -> retry, one log line per attempt.

Used by :class:`~api_orchestration.operators.http.ResilientHttpOperator` (one call per task) and by
anything that makes many calls in one process. It never sleeps longer than ``max_sleep``: longer
waits raise :class:`DeferralNeeded`, which the operator turns into a deferral to the triggerer.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import requests

from api_orchestration import metrics
from api_orchestration.errors import (
    CallTimeoutError,
    CircuitOpenError,
    HttpStatusError,
    PermanentHttpStatusError,
    TransportError,
)
from api_orchestration.policy import BreakerPolicy, RateLimit, RetryPolicy
from api_orchestration.redaction import redact_url
from api_orchestration.resilience import breaker as brk
from api_orchestration.resilience.outcome import (
    Outcome,
    classify_exception,
    classify_status,
    may_retry_method,
    parse_retry_after,
)
from api_orchestration.state.base import Admission, StateBackend, Transition, Verdict

logger = logging.getLogger(__name__)
HOLD_DEFER_SECONDS = 5.0  # how long to defer when calls in flight (or half-open trials) block a call


class DeferralNeeded(Exception):
    """The next step is more than ``max_sleep`` away: defer ``seconds``, then resume at ``attempt``."""

    def __init__(self, seconds: float, reason: str, attempt: int) -> None:
        self.seconds, self.reason, self.attempt = seconds, reason, attempt
        super().__init__(f"wait {seconds:.2f} s ({reason}) before attempt {attempt}")


@dataclass(frozen=True)
class Guard:
    """The resilience settings of one call site."""

    backend: StateBackend
    limit_key: str
    rate_limit: RateLimit | None = None
    breaker_key: str = ""
    breaker: BreakerPolicy | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_sleep: float = 10.0
    on_circuit_open: str = "fail"  # or "defer"


@dataclass
class _Waits:
    parts: list[str] = field(default_factory=list)

    def add(self, seconds: float, why: str) -> None:
        if seconds > 0.0005:
            self.parts.append(f"{seconds:.3f} s {why}")

    def text(self) -> str:
        return f"; waited {', '.join(self.parts)}" if self.parts else ""


def lease_seconds(timeout: float | tuple[float, float] | None) -> float:
    """How long a breaker permit is counted in flight: the call's whole timeout (connect + read;
    60 s when none), plus 30 s."""
    seconds = float(sum(timeout)) if isinstance(timeout, tuple) else float(timeout or 60.0)
    return seconds + 30.0


def note_granted(guard: Guard, admission: Admission, held: float, waits: _Waits, log: Any) -> None:
    """A granted admission: what was waited for (for the attempt's log line), a trial call, metrics."""
    why = "Retry-After pause" if admission.paused else "rate limit"
    waits.add(held, f"for calls in flight on circuit {guard.breaker_key!r}")
    waits.add(admission.wait, f"for {why} on {guard.limit_key!r}")
    if admission.breaker is not None and admission.breaker.kind == "trial":
        log.warning("circuit %r is half-open: this is a trial call", guard.breaker_key)
        metrics.breaker_trial(guard.breaker_key)
    metrics.limiter_wait(guard.limit_key, admission.wait)


def on_refusal(guard: Guard, admission: Admission, attempt: int, held: float) -> float:
    """A refused admission: seconds to wait before asking again (calls in flight could trip the
    breaker; ``held`` were waited already), else raises DeferralNeeded or CircuitOpenError."""
    g = guard
    if admission.reason == "defer":
        metrics.limiter_deferred(g.limit_key)
        why = "Retry-After pause" if admission.paused else "rate limit"
        raise DeferralNeeded(admission.wait, f"{why} on {g.limit_key!r}", attempt)
    if admission.reason == "hold":
        if held + admission.wait <= g.max_sleep:
            return admission.wait
        raise DeferralNeeded(HOLD_DEFER_SECONDS, f"calls in flight on circuit {g.breaker_key!r}", attempt)
    metrics.breaker_rejected(g.breaker_key)  # open or busy (half-open, trials taken)
    if g.on_circuit_open == "defer" and admission.reason in ("open", "busy"):
        seconds = admission.wait if admission.reason == "open" else HOLD_DEFER_SECONDS
        raise DeferralNeeded(max(seconds, 0.0), f"circuit {g.breaker_key!r} {admission.reason}", attempt)
    reopen_at = admission.breaker.reopen_at if admission.breaker else None
    raise CircuitOpenError(g.breaker_key, reopen_at, admission.reason)


def log_transition(guard: Guard, transition: Transition | None, log: Any) -> None:
    """Log (as a warning) and count a verdict that changed the breaker's state."""
    if transition is not None and transition.changed:
        log.warning("circuit %r: %s -> %s", guard.breaker_key, transition.before, transition.after)
        metrics.breaker_transition(guard.breaker_key, transition.before, transition.after)


@dataclass
class Attempt:
    """One attempt as both callers (``requests`` and aiohttp) see it, once it has an outcome.
    ``response`` has ``status_code`` and ``headers`` (a ``requests.Response`` or an ``acall.Reply``)."""

    method: str
    safe_url: str
    number: int
    max_attempts: int
    retry_ok: bool  # may this call be retried at all (idempotent method or key)
    elapsed: float
    waits: _Waits
    outcome: Outcome
    response: Any
    error: Exception | None

    @property
    def will_retry(self) -> bool:
        return not self.outcome.ok and self.outcome.retryable and self.number < self.max_attempts

    def breaker_failure(self, guard: Guard) -> bool:
        """Counts against the breaker: a failure the breaker counts, or a slow call."""
        slow_after = guard.breaker.slow_call_seconds if guard.breaker else None
        return self.outcome.breaker_failure or bool(slow_after and self.elapsed >= slow_after)


def retry_after_of(response: Any, policy: RetryPolicy) -> tuple[float | None, bool]:
    """A 429/503's ``Retry-After`` in seconds (capped when honoured), and whether to pause the
    limiter key for every caller (an honoured 429)."""
    if response is None or response.status_code not in (429, 503):
        return None, False
    seconds = parse_retry_after(response.headers.get("Retry-After"))
    if seconds is None or not policy.respect_retry_after:
        return seconds, False
    return min(seconds, policy.max_retry_after), response.status_code == 429


def redacted_error(error: Exception | None, raw_urls: tuple[str, ...]) -> str:
    """The error's text with the request's URL forms (which may carry secrets) redacted."""
    if error is None:
        return ""
    text = f"{type(error).__name__}: {error}"
    for raw in raw_urls:
        if raw:
            text = text.replace(raw, redact_url(raw))
    return text


def conclude(
    a: Attempt, guard: Guard, log: Any, retry_after: float | None, error_text: str
) -> tuple[float, str] | None:
    """Log the attempt (one line) and decide: ``None`` on success, ``(delay, why)`` to retry, or
    raise the typed error when giving up."""
    result = str(a.response.status_code) if a.response is not None else type(a.error).__name__
    line = f"{a.method} {a.safe_url} attempt {a.number}/{a.max_attempts} -> {result} in {a.elapsed * 1000:.1f} ms"
    line += a.waits.text()
    if a.outcome.ok:
        log.info("%s", line)
        metrics.call_done(guard.limit_key, ok=True)
        return None
    if a.will_retry:
        if retry_after is not None and guard.retry.respect_retry_after:
            delay, why = retry_after, "Retry-After"
        else:
            delay, why = guard.retry.backoff(a.number), "backoff"
        log.warning("%s; retrying in %.3f s (%s)", line, delay, why)
        metrics.retry(guard.limit_key)
        return delay, why
    unkeyed = not a.retry_ok and a.outcome.retryable
    reason = f" ({a.method} without an idempotency key is not retried)" if unkeyed else ""
    log.error("%s; giving up%s", line, reason)
    metrics.call_done(guard.limit_key, ok=False)
    raise _error(a, error_text, retry_after)


def _error(a: Attempt, error_text: str, retry_after: float | None) -> Exception:
    if a.response is not None:
        cls = (
            HttpStatusError
            if (a.outcome.breaker_failure or a.outcome.retryable)
            else PermanentHttpStatusError
        )
        return cls(
            method=a.method,
            url=a.safe_url,
            status=a.response.status_code,
            response=a.response,
            retry_after=retry_after,
            attempts=a.number,
        )
    cls_t = CallTimeoutError if a.outcome.kind == "timeout" else TransportError
    # no __cause__: the client's exception text holds the raw URL; ``error_text`` is its redacted text
    return cls_t(
        f"{a.method} {a.safe_url} failed after {a.number} attempt(s): {error_text}",
        method=a.method,
        url=a.safe_url,
        attempts=a.number,
    )


class ResilientCaller:
    """Sends requests over one ``requests.Session`` (built by ``HttpHook.get_conn``) under a :class:`Guard`."""

    def __init__(
        self,
        session: requests.Session,
        guard: Guard,
        *,
        timeout: float | tuple[float, float] | None = (10.0, 60.0),
        send_options: dict[str, Any] | None = None,
        log: logging.Logger | logging.LoggerAdapter | None = None,
    ) -> None:
        self.session, self.guard, self.timeout = session, guard, timeout
        self.send_options = send_options or {}
        self.log = log or logger
        self.lease_seconds = lease_seconds(timeout)
        self._settings: dict[str, dict[str, Any]] = {}  # per scheme://host: bounded in bulk mode
        self._pending: Verdict | None = None  # the last call's verdict, sent with the next admission

    # -- the guarded steps ----------------------------------------------------------------------
    def _admit(self, attempt: int, waits: _Waits) -> tuple[brk.BreakerDecision | None, float]:
        """Take the limiter slot and the breaker permit in one atomic store operation. Returns the
        permit to report the verdict with and how long to sleep until the slot."""
        g = self.guard
        breaker_key = g.breaker_key if g.breaker is not None else None
        held = 0.0
        while True:
            verdict, self._pending = self._pending, None
            try:
                admission = g.backend.admit(
                    g.limit_key,
                    g.rate_limit,
                    breaker_key,
                    g.breaker,
                    g.max_sleep,
                    self.lease_seconds,
                    verdict=verdict,
                )
            except BaseException:
                self._pending = verdict  # not recorded: keep it for flush()
                raise
            self._log_transition(admission.recorded)
            if admission.granted:
                note_granted(g, admission, held, waits, self.log)
                return admission.breaker, admission.wait
            pause = on_refusal(g, admission, attempt, held)
            time.sleep(pause)
            held += pause

    def _report(self, decision: brk.BreakerDecision | None, failed: bool, *, now: bool) -> None:
        """Record a verdict now, or keep it to send with this caller's next admission (one round
        trip instead of two); :meth:`flush` sends a kept one."""
        g = self.guard
        if decision is None or g.breaker is None:
            return
        self.flush()
        verdict = Verdict(g.breaker_key, g.breaker, decision, failed)
        if now:
            self._log_transition(g.backend.breaker_record(verdict.key, verdict.policy, decision, failed))
        else:
            self._pending = verdict

    def flush(self) -> None:
        """Record the last call's verdict if it is still pending. Call it when done calling."""
        verdict, self._pending = self._pending, None
        if verdict is not None:
            self._log_transition(
                self.guard.backend.breaker_record(
                    verdict.key, verdict.policy, verdict.decision, verdict.failed
                )
            )

    def _log_transition(self, transition: Transition | None) -> None:
        log_transition(self.guard, transition, self.log)

    def _send(self, prepared: requests.PreparedRequest) -> requests.Response:
        url = prepared.url or ""
        origin = url.split("/", 3)[:3]  # proxies and CA bundle depend on scheme and host only
        settings = self._settings.get("/".join(origin))
        if settings is None:
            s = self.session
            settings = s.merge_environment_settings(
                url, proxies=s.proxies, stream=s.stream, verify=s.verify, cert=s.cert
            )
            settings["allow_redirects"] = self.send_options.get("allow_redirects", True)
            self._settings["/".join(origin)] = settings
        return self.session.send(prepared, timeout=self.timeout, **settings)

    # -- one call, many attempts ----------------------------------------------------------------
    def call(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        idempotency_header: str = "Idempotency-Key",
        first_attempt: int = 1,
    ) -> requests.Response:
        """Make the call; return the successful response or raise a typed error."""
        method = method.upper()
        g, policy = self.guard, self.guard.retry
        headers = dict(headers or {})
        if idempotency_key:
            headers[idempotency_header] = idempotency_key
        if method in ("GET", "HEAD"):
            request = requests.Request(method, url, params=params, headers=headers)
        else:
            request = requests.Request(method, url, params=params, json=json, data=data, headers=headers)
        prepared = self.session.prepare_request(request)
        safe_url = redact_url(prepared.url or url)
        retry_ok = may_retry_method(method, idempotency_key)
        max_attempts = policy.max_attempts if retry_ok else 1
        attempt = first_attempt
        waits = _Waits()
        while True:
            permit, wait = self._admit(attempt, waits)
            response: requests.Response | None = None
            error: Exception | None = None
            try:
                if wait > 0:
                    time.sleep(wait)
                started = time.perf_counter()
                try:
                    response = self._send(prepared)
                    outcome = classify_status(response.status_code, policy)
                except requests.Timeout as exc:
                    error, outcome = exc, classify_exception(True, policy)
                except requests.RequestException as exc:
                    error, outcome = exc, classify_exception(False, policy)
            except BaseException:  # killed or timed out mid-call: the effect is unknown, count a failure
                self._report(permit, True, now=True)
                raise
            elapsed = time.perf_counter() - started
            metrics.attempt(g.limit_key, elapsed)
            a = Attempt(
                method, safe_url, attempt, max_attempts, retry_ok, elapsed, waits, outcome, response, error
            )
            self._report(permit, a.breaker_failure(g), now=a.will_retry)
            retry_after = self._retry_after(response)
            error_text = redacted_error(error, (prepared.url or "", prepared.path_url or ""))
            step = conclude(a, g, self.log, retry_after, error_text)
            if step is None:
                return response  # type: ignore[return-value]
            delay, why = step
            attempt, waits = attempt + 1, _Waits()
            if delay > g.max_sleep:
                raise DeferralNeeded(delay, why, attempt)
            time.sleep(delay)
            waits.add(delay, f"for {why}")

    def _retry_after(self, response: requests.Response | None) -> float | None:
        seconds, pause = retry_after_of(response, self.guard.retry)
        if pause:
            self.guard.backend.limiter_pause(self.guard.limit_key, seconds)  # type: ignore[arg-type]
            metrics.limiter_paused(self.guard.limit_key)
        return seconds

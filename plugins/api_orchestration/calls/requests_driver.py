"""The attempt flow (:mod:`.flow`) carried out with ``requests``: one call at a time, in this thread.

:class:`ResilientCaller` is what the single-call operator, the threads bulk engine and TaskFlow code
use. Its session comes from providers-http's ``HttpHook.get_conn`` (base URL, credentials and
headers from the Airflow Connection). A verdict that needs no hurry travels with the caller's next
admission (one store round trip per call), and a caller making calls one after another takes several
admissions per round trip (:mod:`.ahead`); :meth:`ResilientCaller.flush` sends the last verdicts and
gives back the admissions it did not use.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from http import HTTPStatus
from typing import Any

import requests
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers

from api_orchestration.calls.ahead import AdmissionsAhead
from api_orchestration.calls.events import BreakerTransition, VerdictNotRecorded, default_events
from api_orchestration.calls.flow import (
    Admit,
    Admitted,
    Authorize,
    CacheFound,
    CacheLookup,
    CacheStore,
    CallInfo,
    Command,
    DeferralNeeded,
    HttpRequest,
    Pause,
    Report,
    Send,
    Sent,
    ServerBudget,
    Sleep,
    Stepper,
    attempt_flow,
    decision_instant,
    late_allowance,
)
from api_orchestration.calls.guard import Guard, lease_seconds
from api_orchestration.errors import StateBackendError
from api_orchestration.redaction import redact_url
from api_orchestration.resilience.admission import Admission, AdmissionRequest, Transition, Verdict
from api_orchestration.resilience.http_cache import CacheEntry
from api_orchestration.resilience.kinds import Refusal

__all__ = ["DeferralNeeded", "Guard", "ResilientCaller", "lease_seconds", "response_from_entry"]
logger = logging.getLogger(__name__)


def response_from_entry(entry: CacheEntry, request: requests.PreparedRequest) -> requests.Response:
    """A ``requests.Response`` serving a cached entry (``from_cache`` is True on it)."""
    response = requests.Response()
    response.status_code, response._content = entry.status, entry.body
    response.headers = CaseInsensitiveDict(dict(entry.headers))
    response.encoding = get_encoding_from_headers(response.headers)
    response.reason = HTTPStatus(entry.status).phrase if entry.status in HTTPStatus._value2member_map_ else ""
    response.url, response.request = request.url or "", request
    response.from_cache = True  # type: ignore[attr-defined]
    return response


def _key_of(verdict: Verdict) -> str:
    """The key a verdict is told under in events: its breaker's, else its limiter's."""
    return verdict.request.breaker_key or verdict.request.limit_key or ""


class ResilientCaller:
    """Sends requests over one ``requests.Session`` under a :class:`Guard`."""

    def __init__(
        self,
        session: requests.Session,
        guard: Guard,
        *,
        timeout: float | tuple[float, float] | None = (10.0, 60.0),
        send_options: dict[str, Any] | None = None,
        log: logging.Logger | logging.LoggerAdapter | Any = None,
    ) -> None:
        self.session, self.guard, self.timeout = session, guard, timeout
        self.send_options = send_options or {}
        self.log = log or logger
        self.lease = lease_seconds(timeout)
        self.request = guard.admission_request(self.lease)
        self.events = default_events(self.log, guard.listeners)
        self._settings: dict[str, dict[str, Any]] = {}  # per scheme://host: bounded in bulk mode
        self._pending: list[Verdict] = []  # verdicts not recorded yet, sent with the next admission
        self.ahead = AdmissionsAhead(self.request, late_allowance(guard.shortest_window))
        self.round_trip = float("inf")  # the shortest admission seen (stores on another host's clock)

    # -- one call ---------------------------------------------------------------------------------
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
        cache_key: str | None = None,
        guard: Guard | None = None,
    ) -> requests.Response:
        """Make the call; return the successful response or raise a typed error (or DeferralNeeded).
        ``cache_key``: the entry's key in the guard's cache (default: the method and full URL);
        ``guard``: this call's (default: the caller's; bulk's per-item keys)."""
        r = HttpRequest(method, url, params, json, data, headers, idempotency_key, idempotency_header)
        body = {"json": r.json, "data": r.data} if r.has_body else {}
        request = requests.Request(r.method, r.url, params=r.params, headers=r.all_headers, **body)
        prepared = self.session.prepare_request(request)
        return self.send(prepared, idempotency_key, first_attempt, cache_key, guard)

    def send(
        self,
        prepared: requests.PreparedRequest,
        idempotency_key: str | None = None,
        first_attempt: int = 1,
        cache_key: str | None = None,
        guard: Guard | None = None,
    ) -> requests.Response:
        """Send a prepared request under the guard (its idempotency header, if any, already set).
        A verdict pending from an earlier call of another guard is recorded under its own keys."""
        guard = guard or self.guard
        request = self.request if guard is self.guard else guard.admission_request(self.lease)
        url = prepared.url or ""
        info = CallInfo(
            prepared.method or "GET", redact_url(url), idempotency_key, (url, prepared.path_url),
            prepared.headers, cache_key,
        )  # fmt: skip
        settings = self._send_settings(url)  # before admission: nothing slow between slot and send
        stepper = Stepper(attempt_flow(info, guard, request, self.events, time.monotonic, first_attempt))
        while (command := stepper.next()) is not None:
            try:
                stepper.succeeded(self._execute(command, prepared, settings, guard, request))
            except BaseException as exc:
                stepper.failed(exc)
        return stepper.result  # type: ignore[return-value]

    def flush(self) -> None:
        """Record the verdicts still pending and give back the admissions taken ahead. A store
        failure is logged, not raised: the calls were made, their results stand, leases expire."""
        self._stop_ahead()
        verdicts, self._pending = self._pending, []
        if not verdicts:
            return
        backend = self.guard.backend
        try:
            if len(verdicts) == 1:
                recorded: tuple[Transition, ...] = (backend.record(verdicts[0]),)
            else:
                recorded = backend.admit_many(0, self.request, verdicts).recorded
        except StateBackendError as exc:
            self._not_recorded(verdicts, exc)
            return
        self._recorded(verdicts, recorded)

    # -- the commands -----------------------------------------------------------------------------
    def _execute(
        self,
        command: Command,
        prepared: requests.PreparedRequest,
        settings: dict[str, Any],
        guard: Guard,
        request: AdmissionRequest,
    ) -> Any:
        if isinstance(command, Send):
            if command.headers:  # the OAuth2 Authorization, a revalidation's If-None-Match
                prepared = prepared.copy()
                prepared.headers.update(dict(command.headers))
            started = time.perf_counter()
            try:
                response = self.session.send(prepared, timeout=self.timeout, **settings)
            except requests.RequestException as exc:
                return Sent(None, exc, isinstance(exc, requests.Timeout), time.perf_counter() - started)
            return Sent(response, None, False, time.perf_counter() - started)
        if isinstance(command, Authorize):
            return guard.tokens.authorize(command.reject)  # type: ignore[union-attr]
        if isinstance(command, Admit):
            return self._admit(command, guard, request)
        if isinstance(command, Sleep):
            time.sleep(command.seconds)
            return None
        if isinstance(command, Report):
            if command.verdict.failed:  # a failure ends the run of admissions taken ahead
                self._stop_ahead()
            if not command.urgent:
                self._pending.append(command.verdict)
                return None
            self.flush()
            return guard.backend.record(command.verdict)
        if isinstance(command, ServerBudget):
            if not self.ahead.server_allows(command.remaining, command.limit):
                self._stop_ahead()
            return None
        if isinstance(command, Pause):
            self._stop_ahead()
            return guard.backend.limiter_pause(guard.limit_key, command.seconds)
        if isinstance(command, CacheLookup):
            found = guard.backend.cache_get(command.scope, command.key)
            entry = CacheEntry.from_dict(found) if found else None
            return CacheFound(entry, lambda e: response_from_entry(e, prepared))
        if isinstance(command, CacheStore):
            e = command.entry
            return guard.backend.cache_put(
                command.scope, command.key, e.to_dict(), e.size, command.keep, command.max_total_bytes
            )
        raise TypeError(f"unknown command {command!r}")

    def _admit(self, command: Admit, guard: Guard, request: AdmissionRequest) -> Admitted:
        """An admission held from an earlier round trip while fresh, else one round trip that also
        records the pending verdicts (and takes more admissions ahead when the caller is quick)."""
        ahead = self.ahead if guard is self.guard and not command.slot_only else None
        if ahead is not None:
            held, stale = ahead.take(time.monotonic())
            self._give_back(stale)
            if held is not None:
                return held
        count, asked = 1, request.slot_only() if command.slot_only else request
        if ahead is not None:
            plan = ahead.plan(time.monotonic())
            count, asked = plan.count, plan.request
        verdicts, self._pending = self._pending, []
        sent = time.monotonic()
        try:
            batch = guard.backend.admit_many(count, asked, verdicts)
            self._recorded(verdicts, batch.recorded)
            if count > 1 and not batch.granted and batch.refused and batch.refused.reason == Refusal.DEFER:
                sent = time.monotonic()  # no slot due now: ask as for a single call
                batch = guard.backend.admit_many(1, request)
        except StateBackendError as exc:
            self._not_recorded(verdicts, exc)
            raise
        admissions = list(batch.granted) or [batch.refused]
        admitted = [self._admitted(a, guard, sent) for a in admissions if a is not None]
        if ahead is not None:
            ahead.keep(admitted[1:])
        return admitted[0]

    def _admitted(self, admission: Admission, guard: Guard, sent: float) -> Admitted:
        wall, now = time.time(), time.monotonic()
        if guard.backend.local_clock:  # the decision instant is known exactly
            return Admitted(admission, decision_instant(admission, True, sent, wall, now), 0.0)
        # the steady part of the store's round trip, once this caller has seen one; a first
        # admission (a single-call task's only one) counts all of it against the slot
        steady = self.round_trip if self.round_trip != float("inf") else 0.0
        self.round_trip = min(self.round_trip, now - sent)
        return Admitted(admission, sent, steady)

    def _stop_ahead(self) -> None:
        """End the run of admissions taken ahead: those held go back with the next verdicts."""
        self._give_back(self.ahead.give_back())

    def _give_back(self, admissions: list[Admission]) -> None:
        """Admissions taken ahead and not used: their breaker leases go back with the next verdicts."""
        for admission in admissions:
            verdict = Verdict.of(self.request, admission, False)
            if verdict is not None:
                self._pending.append(replace(verdict, unused=True))

    def _not_recorded(self, verdicts: list[Verdict], exc: StateBackendError) -> None:
        for verdict in verdicts:
            if not verdict.unused:
                self.events.publish(VerdictNotRecorded(_key_of(verdict), 1, exc.cause_text))

    def _recorded(self, verdicts: list[Verdict], transitions: tuple[Transition, ...]) -> None:
        """Tell the breaker transitions the recorded ``verdicts`` caused, each under its own key."""
        for verdict, transition in zip(verdicts, transitions, strict=False):
            self._transition(verdict, transition)

    def _transition(self, verdict: Verdict, transition: Transition | None) -> None:
        if transition is not None and transition.changed:
            key = verdict.request.breaker_key or ""
            self.events.publish(BreakerTransition(key, transition.before, transition.after))

    def _send_settings(self, url: str) -> dict[str, Any]:
        """Proxies, CA bundle and redirects for the URL's scheme and host, computed once per origin."""
        origin = "/".join(url.split("/", 3)[:3])
        settings = self._settings.get(origin)
        if settings is None:
            s = self.session
            settings = s.merge_environment_settings(
                url, proxies=s.proxies, stream=s.stream, verify=s.verify, cert=s.cert
            )
            settings["allow_redirects"] = self.send_options.get("allow_redirects", True)
            self._settings[origin] = settings
        return settings

"""api_orchestration: resilient HTTP operators, shared rate limiters and circuit breakers for Airflow 3."""

from api_orchestration.calls.idempotency import idempotency_key
from api_orchestration.calls.requests_driver import DeferralNeeded, Guard, ResilientCaller
from api_orchestration.errors import (
    ApiOrchestrationError,
    CallTimeoutError,
    CircuitOpenError,
    ConfigurationError,
    HttpCallError,
    HttpStatusError,
    PermanentHttpStatusError,
    ResponseCheckError,
    SpecError,
    StateBackendError,
    TransportError,
)
from api_orchestration.operators.http import ResilientHttpOperator, default_response_filter
from api_orchestration.operators.saga import CompensationOperator, SagaOutcomeOperator
from api_orchestration.operators.step import StepOperator
from api_orchestration.policy import BreakerPolicy, RateLimit, RetryPolicy
from api_orchestration.resilience.outcome import parse_retry_after
from api_orchestration.state import StateBackend, backend_for_url, configured_state_url, get_backend
from api_orchestration.workflows.build import build
from api_orchestration.workflows.model import Bulk, Call, FanOut, Step, Workflow, result

__all__ = [
    "ApiOrchestrationError",
    "BreakerPolicy",
    "Bulk",
    "Call",
    "CallTimeoutError",
    "CircuitOpenError",
    "CompensationOperator",
    "ConfigurationError",
    "DeferralNeeded",
    "FanOut",
    "Guard",
    "HttpCallError",
    "HttpStatusError",
    "PermanentHttpStatusError",
    "RateLimit",
    "ResilientCaller",
    "ResilientHttpOperator",
    "ResponseCheckError",
    "RetryPolicy",
    "SagaOutcomeOperator",
    "SpecError",
    "StateBackend",
    "StateBackendError",
    "Step",
    "StepOperator",
    "TransportError",
    "Workflow",
    "backend_for_url",
    "build",
    "configured_state_url",
    "default_response_filter",
    "get_backend",
    "idempotency_key",
    "parse_retry_after",
    "result",
]

"""api_orchestration: resilient HTTP operators, shared rate limiters and circuit breakers for Airflow 3.

This module is the public API for DAG authors: the operators, the policies, the workflow model and
``build``, the guarded client for TaskFlow code, and the errors. Everything else is internal; the
package's folders show its layers (resilience -> state -> calls -> operators -> workflows -> specs;
status beside).
"""

from api_orchestration.calls.flow import DeferralNeeded
from api_orchestration.calls.guard import Guard
from api_orchestration.calls.requests_driver import ResilientCaller
from api_orchestration.errors import (
    ApiOrchestrationError,
    CallTimeoutError,
    CircuitOpenError,
    ConfigurationError,
    HttpCallError,
    HttpStatusError,
    JobError,
    JobFailedError,
    JobTimeoutError,
    PermanentHttpStatusError,
    PolicyConflictError,
    ResponseCheckError,
    SpecError,
    StateBackendError,
    TransportError,
)
from api_orchestration.operators.bulk import BulkHttpOperator
from api_orchestration.operators.http import ResilientHttpOperator
from api_orchestration.operators.poll import PollingHttpOperator
from api_orchestration.operators.saga import CompensationOperator, SagaOutcomeOperator
from api_orchestration.operators.step import StepOperator
from api_orchestration.policy import BreakerPolicy, CompensationRetry, Poll, RateLimit, RetryPolicy
from api_orchestration.workflows.build import build
from api_orchestration.workflows.model import Bulk, Call, FanOut, Step, Workflow, result

__all__ = [
    "ApiOrchestrationError",
    "BreakerPolicy",
    "Bulk",
    "BulkHttpOperator",
    "Call",
    "CallTimeoutError",
    "CircuitOpenError",
    "CompensationOperator",
    "CompensationRetry",
    "ConfigurationError",
    "DeferralNeeded",
    "FanOut",
    "Guard",
    "HttpCallError",
    "HttpStatusError",
    "JobError",
    "JobFailedError",
    "JobTimeoutError",
    "PermanentHttpStatusError",
    "PolicyConflictError",
    "Poll",
    "PollingHttpOperator",
    "RateLimit",
    "ResilientCaller",
    "ResilientHttpOperator",
    "ResponseCheckError",
    "RetryPolicy",
    "SagaOutcomeOperator",
    "SpecError",
    "StateBackendError",
    "Step",
    "StepOperator",
    "TransportError",
    "Workflow",
    "build",
    "result",
]

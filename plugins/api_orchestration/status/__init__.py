"""What the status page and API show: breakers, limiters and recent saga outcomes, read from the
configured state backend (the same store every worker decides on).

``views`` turns the backend's raw :meth:`~api_orchestration.state.base.StateBackend.snapshot` into
plain JSON-able rows; ``sagas`` is the small record the saga outcome task writes; ``app`` is the
FastAPI app (imported only by the api-server, through ``plugin``, the Airflow plugin).
"""

from api_orchestration.state.sagas import record_saga_outcome
from api_orchestration.status.views import breaker_view, collect_status, limiter_view

__all__ = ["breaker_view", "collect_status", "limiter_view", "record_saga_outcome"]

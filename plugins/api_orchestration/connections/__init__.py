"""The ``resilient_http`` connection type: an HTTP API's host and credentials together with its
default :class:`~api_orchestration.policy.RateLimit`, :class:`~api_orchestration.policy.BreakerPolicy`
and :class:`~api_orchestration.policy.RetryPolicy`, set once by whoever owns the connection.

``fields`` declares the form fields (the provider info's ``conn-fields``), ``policies`` reads them
back into policy objects (:func:`connection_policies`), ``hook`` is the connection's hook.
"""

from api_orchestration.connections.hook import ResilientHttpHook
from api_orchestration.connections.policies import ConnectionPolicies, connection_policies

__all__ = ["ConnectionPolicies", "ResilientHttpHook", "connection_policies"]

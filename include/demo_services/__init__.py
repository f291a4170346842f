"""Demo API for tests, benchmarks and ``make run``: a small stdlib HTTP/1.1 server.

``DemoServer(port=0).start()`` serves echo, status, delay, flaky and rate-limited endpoints,
business participant services for saga and orchestration examples (payments, inventory,
shipping, users, notifications: :mod:`demo_services.participants`) and, under ``/admin``, a call
log, the services' ledger and fault injection; ``python -m demo_services`` runs it in the
foreground.
"""

from demo_services.app import DemoServer

__all__ = ["DemoServer"]

"""The business participant services and their admin endpoints, as one route table.

Payments, inventory and shipping (effects in the :mod:`~demo_services.ledger`), users, posts and
analytics, notifications, a ``GET /<service>/health`` per service, and ``/admin/ledger``,
``/admin/faults``, ``/admin/notifications`` and ``/admin/users/<id>/touch``; and the services
modelled on real APIs' conventions: an OAuth2 server and protected API (:mod:`~demo_services.oauth`),
per-tenant multi-window rate limits with GitHub/IETF headers (:mod:`~demo_services.ratelimits`),
async export jobs (:mod:`~demo_services.exports`) and cacheable reference data
(:mod:`~demo_services.reference`); list APIs in GitHub, Stripe and
offset styles over large generated datasets (:mod:`~demo_services.listing_apis`, ``/admin/datasets``). Every service write honours ``Idempotency-Key`` as Stripe
does (:mod:`~demo_services.idempotency`); ``POST /admin/reset`` clears all of it.
"""

from __future__ import annotations

from demo_services import (
    exports,
    idempotency,
    inventory,
    listing_apis,
    notifications,
    oauth,
    payments,
    ratelimits,
    reference,
    shipping,
    users,
)
from demo_services.common import DELETE, GET, POST
from demo_services.faults import admin_clear_faults, admin_list_faults, admin_set_fault
from demo_services.ledger import admin_ledger
from demo_services.routing import Route

ADMIN_ROUTES: tuple[Route, ...] = (
    Route("/admin/ledger", admin_ledger, GET, record=False),
    Route("/admin/faults", admin_list_faults, GET, record=False),
    Route("/admin/faults", admin_set_fault, POST, record=False),
    Route("/admin/faults", admin_clear_faults, DELETE, record=False),
    *notifications.ADMIN_ROUTES,
    *users.ADMIN_ROUTES,
    *idempotency.ADMIN_ROUTES,
    *oauth.ADMIN_ROUTES,
    *ratelimits.ADMIN_ROUTES,
    *exports.ADMIN_ROUTES,
    *reference.ADMIN_ROUTES,
    *listing_apis.ADMIN_ROUTES,
)

ROUTES: tuple[Route, ...] = (
    *ADMIN_ROUTES,
    *payments.ROUTES,
    *inventory.ROUTES,
    *shipping.ROUTES,
    *users.ROUTES,
    *notifications.ROUTES,
    *oauth.ROUTES,
    *ratelimits.ROUTES,
    *exports.ROUTES,
    *reference.ROUTES,
    *listing_apis.ROUTES,
)

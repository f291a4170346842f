"""Pure decisions, no I/O: the rate limiter, the circuit breaker, the bulkhead, their composition into
one admission, and what an attempt's outcome means. The state stores (:mod:`api_orchestration.state`)
run these functions atomically, on the store's clock."""

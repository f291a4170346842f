"""One guarded HTTP call (providers-http's "hook" role): the attempt flow written once
(:mod:`.flow`), the requests and aiohttp drivers that carry it out, admissions in batches, the bulk
engines, idempotency keys, and the events its listeners (log, metrics) receive."""

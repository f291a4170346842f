-- close a breaker with an empty window, in a new generation
local hash = key('br', req.breaker_key)
local r = load_breaker(hash)
local gen_before = r.gen
r = {state = 'closed', gen = r.gen + 1, opened_until = 0, half_open_since = 0, trials_issued = 0,
     trial_successes = 0, trial_failures = 0, outcomes = '', seq = 0, changed_at = now}
save_breaker(r, gen_before, hash, hash .. ':z')
return cjson.encode({gen = r.gen})

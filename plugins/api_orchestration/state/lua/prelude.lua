-- Shared by every operation (prepended to each op's file). The Lua port of
-- api_orchestration.resilience (limiter, breaker, admission): keep the two in step; a property test
-- runs both on the same random scenarios. ARGV[1] is the request as JSON; the reply is JSON with
-- named fields, floats as strings ('%.17g': Redis truncates Lua numbers to integers on return).
local TTL_MS = 604800000  -- a key idle for 7 days is forgotten
local req = cjson.decode(ARGV[1])
local now
if req.now then
  now = tonumber(req.now)  -- tests only: an explicit clock
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function f(x) return string.format('%.17g', x) end
local function key(kind, name) return req.prefix .. kind .. ':{' .. name .. '}' end

-- breaker --------------------------------------------------------------------------------------
-- a policy is {failure_rate, window_size, min_calls, open_seconds, half_open_calls, half_open_timeout}
local function trips(o, p)
  if string.len(o) > p[2] then o = string.sub(o, -p[2]) end
  local n = string.len(o)
  local _, fails = string.gsub(o, '1', '')
  return n >= p[3] and fails >= p[1] * n
end
local function load_breaker(hash)
  local h = redis.call('HMGET', hash, 'state', 'gen', 'opened_until', 'half_open_since', 'trials_issued',
                       'trial_successes', 'trial_failures', 'outcomes', 'seq', 'changed_at')
  return {state = h[1] or 'closed', gen = tonumber(h[2]) or 0, opened_until = tonumber(h[3]) or 0,
          half_open_since = tonumber(h[4]) or 0, trials_issued = tonumber(h[5]) or 0,
          trial_successes = tonumber(h[6]) or 0, trial_failures = tonumber(h[7]) or 0,
          outcomes = h[8] or '', seq = tonumber(h[9]) or 0, changed_at = tonumber(h[10]) or 0}
end
local function save_breaker(r, gen_before, hash, leases)
  redis.call('HSET', hash, 'state', r.state, 'gen', r.gen, 'opened_until', f(r.opened_until),
             'half_open_since', f(r.half_open_since), 'trials_issued', r.trials_issued,
             'trial_successes', r.trial_successes, 'trial_failures', r.trial_failures,
             'outcomes', r.outcomes, 'seq', r.seq, 'changed_at', f(r.changed_at))
  redis.call('PEXPIRE', hash, TTL_MS)
  if r.gen ~= gen_before then redis.call('DEL', leases) end
end
local function open_(r, p)
  r.state, r.gen, r.changed_at = 'open', r.gen + 1, now
  r.opened_until = now + p[4]
  r.outcomes, r.trials_issued, r.trial_successes, r.trial_failures = '', 0, 0, 0
end
local function close_(r)
  r.state, r.gen, r.changed_at = 'closed', r.gen + 1, now
  r.outcomes, r.trials_issued, r.trial_successes, r.trial_failures = '', 0, 0, 0
end
local function advance(r, p)
  if r.state == 'open' and now >= r.opened_until then
    r.state, r.gen, r.changed_at = 'half_open', r.gen + 1, now
    r.half_open_since, r.trials_issued, r.trial_successes, r.trial_failures = now, 0, 0, 0
  elseif r.state == 'half_open' and now - r.half_open_since > p[6] then
    open_(r, p)
  end
end
-- live leases of a sorted set (score = expiry): expired ones are dropped
local function live(zset)
  redis.call('ZREMRANGEBYSCORE', zset, '-inf', f(now))
  return redis.call('ZCARD', zset)
end
-- the breaker's decision for one call (mutates r): {allowed, kind, gen, state, lease, reopen_at, wait}
local function acquire(r, p, in_flight)
  advance(r, p)
  if r.state == 'open' then
    return {allowed = false, kind = 'open', gen = r.gen, state = 'open', lease = '', reopen_at = f(r.opened_until),
            wait = f(r.opened_until - now)}
  end
  if r.state == 'half_open' then
    if r.trials_issued >= p[5] then
      return {allowed = false, kind = 'busy', gen = r.gen, state = 'half_open', lease = '', wait = '0'}
    end
    r.trials_issued = r.trials_issued + 1
    return {allowed = true, kind = 'trial', gen = r.gen, state = 'half_open', lease = '', wait = '0'}
  end
  -- the hold rule, only while failing: the last verdict failed and the calls in flight could trip it
  if string.sub(r.outcomes, -1) == '1' and trips(r.outcomes .. string.rep('1', in_flight), p) then
    return {allowed = false, kind = 'hold', gen = r.gen, state = 'closed', lease = '', wait = f(req.hold_s)}
  end
  r.seq = r.seq + 1
  return {allowed = true, kind = 'closed', gen = r.gen, state = 'closed', lease = r.gen .. ':' .. r.seq, wait = '0'}
end
local function record_breaker(r, p, v)
  advance(r, p)
  if v.gen ~= r.gen then return end
  if r.state == 'half_open' and v.kind == 'trial' then
    if v.failed then r.trial_failures = r.trial_failures + 1 else r.trial_successes = r.trial_successes + 1 end
    if r.trial_successes + r.trial_failures >= p[5] then
      if r.trial_failures >= p[1] * p[5] then open_(r, p) else close_(r) end
    end
  elseif r.state == 'closed' and v.kind == 'closed' then
    local o = r.outcomes .. (v.failed and '1' or '0')
    if string.len(o) > p[2] then o = string.sub(o, -p[2]) end
    r.outcomes = o
    if trips(o, p) then open_(r, p) end
  end
end
-- an admission never used for a call: its half-open trial permit is issued again
local function give_back_breaker(r, p, v)
  advance(r, p)
  if v.gen == r.gen and r.state == 'half_open' and v.kind == 'trial' then
    r.trials_issued = math.max(0, r.trials_issued - 1)
  end
end
-- breaker rows read by this script, by hash: each is loaded once and saved once (save_breakers),
-- however many verdicts and admissions of one script touch it
local breakers = {}
local function breaker_row(hash)
  local row = breakers[hash]
  if not row then
    local r = load_breaker(hash)
    row = {r = r, gen = r.gen, hash = hash, leases = hash .. ':z', dirty = false}
    breakers[hash] = row
  end
  return row
end
-- a row's generation changed: its leases are void, dropped at once (leases issued later survive)
local function settle(row)
  row.dirty = true
  if row.r.gen ~= row.gen then
    redis.call('DEL', row.leases)
    row.gen = row.r.gen
  end
end
local function save_breakers()
  for _, row in pairs(breakers) do
    if row.dirty then save_breaker(row.r, row.gen, row.hash, row.leases) end
  end
end
-- a finished call: its bulkhead place given back, its breaker told; returns {before, after}
local function apply_verdict(v)
  if v.bulkhead_lease and v.bulkhead_lease ~= '' then
    redis.call('ZREM', key('rl', v.limit_key) .. ':f', v.bulkhead_lease)
  end
  if not v.breaker_key then return {'', ''} end
  local row = breaker_row(key('br', v.breaker_key))
  if v.lease ~= '' then redis.call('ZREM', row.leases, v.lease) end
  local before = row.r.state
  if v.unused then give_back_breaker(row.r, v.breaker, v) else record_breaker(row.r, v.breaker, v) end
  settle(row)
  return {before, row.r.state}
end

"""Lua ports of ratelimit.decide and the breaker functions, run atomically inside Redis.

Both read the Redis server's clock (``TIME``), so the clocks of the calling hosts do not matter.
Floats cross the Lua boundary as strings (Redis truncates Lua numbers to integers on return).
The behaviour tests in tests/test_state_behaviour.py run against both implementations.
"""

_COMMON = """
local function now_s()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function f(x) return string.format('%.6f', x) end
local TTL_MS = 86400000
"""

LIMITER_ACQUIRE = (
    _COMMON
    + """
-- KEYS: hash, slots zset.  ARGV: has_limit, permits, window, interval, burst, max_wait
local now = now_s()
local h = redis.call('HMGET', KEYS[1], 'tat', 'last_slot', 'paused_until', 'granted')
local tat, last, paused, granted = tonumber(h[1]) or 0, tonumber(h[2]) or 0, tonumber(h[3]) or 0, tonumber(h[4]) or 0
local has = ARGV[1] == '1'
local permits, window, interval, burst = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local max_wait = tonumber(ARGV[6])
local slot = math.max(now, paused)
if has then
  slot = math.max(slot, tat - (burst - 1) * interval, last)
  if burst > 1 then
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', f(now - window))
    local nth = redis.call('ZREVRANGE', KEYS[2], permits - 1, permits - 1, 'WITHSCORES')
    if nth[2] then slot = math.max(slot, tonumber(nth[2]) + window) end
  end
end
local wait = slot - now
local is_paused = 0
if paused > now then is_paused = 1 end
if wait > max_wait then return {0, f(wait), is_paused} end
if has then
  redis.call('HSET', KEYS[1], 'tat', f(math.max(tat, slot) + interval), 'last_slot', f(slot), 'granted', granted + 1)
  redis.call('PEXPIRE', KEYS[1], TTL_MS)
  if burst > 1 then
    local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
    redis.call('ZADD', KEYS[2], f(slot), tostring(seq))
    redis.call('PEXPIRE', KEYS[2], TTL_MS)
  end
end
return {1, f(wait), is_paused}
"""
)

LIMITER_PAUSE = (
    _COMMON
    + """
-- KEYS: hash.  ARGV: seconds
local now = now_s()
local seconds = tonumber(ARGV[1])
local paused = tonumber(redis.call('HGET', KEYS[1], 'paused_until')) or 0
local until_ = math.max(paused, now + seconds)
redis.call('HSET', KEYS[1], 'paused_until', f(until_), 'last_retry_after', f(seconds))
redis.call('PEXPIRE', KEYS[1], TTL_MS)
return f(until_)
"""
)

BREAKER = (
    _COMMON
    + """
-- KEYS: hash, leases zset.
-- ARGV: op, failure_rate, window_size, min_calls, open_seconds, half_open_calls, half_open_timeout,
--       then for acquire: lease_seconds, hold_seconds; for record: kind, gen, lease, failed
local op = ARGV[1]
local rate, wsize, min_calls = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local open_s, trials, ho_timeout = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local now = now_s()
local h = redis.call('HMGET', KEYS[1], 'state', 'gen', 'opened_until', 'half_open_since',
                     'trials_issued', 'trial_successes', 'outcomes', 'seq', 'changed_at', 'trial_failures')
local r = {state = h[1] or 'closed', gen = tonumber(h[2]) or 0, opened_until = tonumber(h[3]) or 0,
           half_open_since = tonumber(h[4]) or 0, trials_issued = tonumber(h[5]) or 0,
           trial_successes = tonumber(h[6]) or 0, outcomes = h[7] or '', seq = tonumber(h[8]) or 0,
           changed_at = tonumber(h[9]) or 0, trial_failures = tonumber(h[10]) or 0}
local gen_before = r.gen

local function trips(o)
  if string.len(o) > wsize then o = string.sub(o, -wsize) end
  local n = string.len(o)
  local _, fails = string.gsub(o, '1', '')
  return n >= min_calls and fails >= rate * n
end
local function open()
  r.state, r.gen, r.changed_at = 'open', r.gen + 1, now
  r.opened_until = now + open_s
  r.outcomes, r.trials_issued, r.trial_successes, r.trial_failures = '', 0, 0, 0
end
local function advance()
  if r.state == 'open' and now >= r.opened_until then
    r.state, r.gen, r.changed_at = 'half_open', r.gen + 1, now
    r.half_open_since, r.trials_issued, r.trial_successes, r.trial_failures = now, 0, 0, 0
  elseif r.state == 'half_open' and now - r.half_open_since > ho_timeout then
    open()
  end
end
local function save()
  redis.call('HSET', KEYS[1], 'state', r.state, 'gen', r.gen, 'opened_until', f(r.opened_until),
             'half_open_since', f(r.half_open_since), 'trials_issued', r.trials_issued,
             'trial_successes', r.trial_successes, 'trial_failures', r.trial_failures,
             'outcomes', r.outcomes, 'seq', r.seq,
             'changed_at', f(r.changed_at))
  redis.call('PEXPIRE', KEYS[1], TTL_MS)
  if r.gen ~= gen_before then redis.call('DEL', KEYS[2]) end
end

if op == 'acquire' then
  local lease_s = tonumber(ARGV[8])
  advance()
  local result
  if r.state == 'open' then
    result = {0, 'open', r.gen, 'open', '', f(r.opened_until), f(r.opened_until - now)}
  elseif r.state == 'half_open' then
    if r.trials_issued >= trials then
      result = {0, 'busy', r.gen, 'half_open', '', '', f(0)}
    else
      r.trials_issued = r.trials_issued + 1
      result = {1, 'trial', r.gen, 'half_open', '', '', f(0)}
    end
  else
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', f(now))
    local in_flight = redis.call('ZCARD', KEYS[2])
    if trips(r.outcomes .. string.rep('1', in_flight)) then
      result = {0, 'hold', r.gen, 'closed', '', '', f(ARGV[9])}
    else
      r.seq = r.seq + 1
      local lease = r.gen .. ':' .. r.seq
      result = {1, 'closed', r.gen, 'closed', lease, '', f(0)}
      save()
      redis.call('ZADD', KEYS[2], f(now + lease_s), lease)
      redis.call('PEXPIRE', KEYS[2], TTL_MS)
      return result
    end
  end
  save()
  return result
elseif op == 'record' then
  local kind, gen, lease, failed = ARGV[8], tonumber(ARGV[9]), ARGV[10], ARGV[11] == '1'
  if lease ~= '' then redis.call('ZREM', KEYS[2], lease) end
  advance()
  local before = h[1] or 'closed'
  if gen == r.gen then
    if r.state == 'half_open' and kind == 'trial' then
      if failed then
        r.trial_failures = r.trial_failures + 1
      else
        r.trial_successes = r.trial_successes + 1
      end
      if r.trial_successes + r.trial_failures >= trials then
        if r.trial_failures >= rate * trials then
          open()
        else
          r.state, r.gen, r.changed_at = 'closed', r.gen + 1, now
          r.outcomes, r.trials_issued, r.trial_successes, r.trial_failures = '', 0, 0, 0
        end
      end
    elseif r.state == 'closed' and kind == 'closed' then
      local o = r.outcomes .. (failed and '1' or '0')
      if string.len(o) > wsize then o = string.sub(o, -wsize) end
      r.outcomes = o
      if trips(o) then open() end
    end
  end
  save()
  return {before, r.state}
elseif op == 'reset' then
  r = {state = 'closed', gen = r.gen + 1, opened_until = 0, half_open_since = 0, trials_issued = 0,
       trial_successes = 0, trial_failures = 0, outcomes = '', seq = 0, changed_at = now}
  save()
  return 'ok'
end
return redis.error_reply('unknown op ' .. tostring(op))
"""
)

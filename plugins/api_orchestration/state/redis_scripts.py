"""The Lua port of ``ratelimit`` and ``breaker``, run atomically inside Redis as one script.

It reads the Redis server's clock (``TIME``), so the clocks of the calling hosts do not matter.
Floats cross the Lua boundary as strings (Redis truncates Lua numbers to integers on return).
tests/test_state_behaviour.py runs one behaviour suite against this and the Python version.

Ops (ARGV[1]):
- ``admit_many`` ``count`` admissions (limiter slot and breaker permit, granted only together),
              stopping at the first refusal; one admission is a batch of one. KEYS rl_hash rl_zset
              br_hash br_zset [br_hash br_zset per verdict]; ARGV count has_limiter_key has_limit
              permits window interval burst max_wait has_breaker <6 breaker policy args> lease_s
              hold_s n_verdicts, [<6 policy args> kind gen lease failed per verdict], the verdicts
              (the callers' previous calls) recorded first.
              Reply: n paused kind gen state refused, 10 refusal fields (reason wait paused and
              the 7 breaker fields, or ''), wait lease per grant, before/after per verdict
- ``pause``   KEYS rl_hash; ARGV seconds
- ``record``  KEYS br_hash br_zset; ARGV <6 breaker policy args> kind gen lease failed
- ``reset``   KEYS br_hash br_zset
"""

STATE = """
local TTL_MS = 604800000  -- a key idle for 7 days is forgotten
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function f(x) return string.format('%.17g', x) end
local op = ARGV[1]

-- breaker ------------------------------------------------------------------------------------
local B = {}
local function policy_from(i)
  B.rate, B.wsize, B.min_calls = tonumber(ARGV[i]), tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  B.open_s, B.trials, B.ho_timeout = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5])
end
local function load(hash)
  local h = redis.call('HMGET', hash, 'state', 'gen', 'opened_until', 'half_open_since', 'trials_issued',
                       'trial_successes', 'trial_failures', 'outcomes', 'seq', 'changed_at')
  return {state = h[1] or 'closed', gen = tonumber(h[2]) or 0, opened_until = tonumber(h[3]) or 0,
          half_open_since = tonumber(h[4]) or 0, trials_issued = tonumber(h[5]) or 0,
          trial_successes = tonumber(h[6]) or 0, trial_failures = tonumber(h[7]) or 0,
          outcomes = h[8] or '', seq = tonumber(h[9]) or 0, changed_at = tonumber(h[10]) or 0}
end
local function save(r, gen_before, hash, leases)
  redis.call('HSET', hash, 'state', r.state, 'gen', r.gen, 'opened_until', f(r.opened_until),
             'half_open_since', f(r.half_open_since), 'trials_issued', r.trials_issued,
             'trial_successes', r.trial_successes, 'trial_failures', r.trial_failures,
             'outcomes', r.outcomes, 'seq', r.seq, 'changed_at', f(r.changed_at))
  redis.call('PEXPIRE', hash, TTL_MS)
  if r.gen ~= gen_before then redis.call('DEL', leases) end
end
local function trips(o)
  if string.len(o) > B.wsize then o = string.sub(o, -B.wsize) end
  local n = string.len(o)
  local _, fails = string.gsub(o, '1', '')
  return n >= B.min_calls and fails >= B.rate * n
end
local function open(r)
  r.state, r.gen, r.changed_at = 'open', r.gen + 1, now
  r.opened_until = now + B.open_s
  r.outcomes, r.trials_issued, r.trial_successes, r.trial_failures = '', 0, 0, 0
end
local function advance(r)
  if r.state == 'open' and now >= r.opened_until then
    r.state, r.gen, r.changed_at = 'half_open', r.gen + 1, now
    r.half_open_since, r.trials_issued, r.trial_successes, r.trial_failures = now, 0, 0, 0
  elseif r.state == 'half_open' and now - r.half_open_since > B.ho_timeout then
    open(r)
  end
end
-- returns allowed, kind, state, lease, reopen_at, wait (mutates r)
local function acquire(r, leases, hold_s)
  advance(r)
  if r.state == 'open' then return 0, 'open', 'open', '', f(r.opened_until), r.opened_until - now end
  if r.state == 'half_open' then
    if r.trials_issued >= B.trials then return 0, 'busy', 'half_open', '', '', 0 end
    r.trials_issued = r.trials_issued + 1
    return 1, 'trial', 'half_open', '', '', 0
  end
  redis.call('ZREMRANGEBYSCORE', leases, '-inf', f(now))
  local in_flight = redis.call('ZCARD', leases)
  if trips(r.outcomes .. string.rep('1', in_flight)) then return 0, 'hold', 'closed', '', '', hold_s end
  r.seq = r.seq + 1
  return 1, 'closed', 'closed', r.gen .. ':' .. r.seq, '', 0
end

-- record a verdict: KEYS hash/leases, ARGV[i..i+5] policy, then kind gen lease failed
local function record(hash, leases, i)
  policy_from(i)
  local kind, gen, lease, failed = ARGV[i + 6], tonumber(ARGV[i + 7]), ARGV[i + 8], ARGV[i + 9] == '1'
  if lease ~= '' then redis.call('ZREM', leases, lease) end
  local r = load(hash)
  local before, gen_before = r.state, r.gen
  advance(r)
  if gen == r.gen then
    if r.state == 'half_open' and kind == 'trial' then
      if failed then r.trial_failures = r.trial_failures + 1 else r.trial_successes = r.trial_successes + 1 end
      if r.trial_successes + r.trial_failures >= B.trials then
        if r.trial_failures >= B.rate * B.trials then
          open(r)
        else
          r.state, r.gen, r.changed_at = 'closed', r.gen + 1, now
          r.outcomes, r.trials_issued, r.trial_successes, r.trial_failures = '', 0, 0, 0
        end
      end
    elseif r.state == 'closed' and kind == 'closed' then
      local o = r.outcomes .. (failed and '1' or '0')
      if string.len(o) > B.wsize then o = string.sub(o, -B.wsize) end
      r.outcomes = o
      if trips(o) then open(r) end
    end
  end
  save(r, gen_before, hash, leases)
  return {before, r.state}
end

-- ops ----------------------------------------------------------------------------------------
if op == 'admit_many' then
  -- state read once and written once; every grant sees the ones before it
  local count, has_key, has_limit = tonumber(ARGV[2]), ARGV[3] == '1', ARGV[4] == '1'
  local permits, window, interval, burst = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
  local max_wait, has_breaker = tonumber(ARGV[9]), ARGV[10] == '1'
  local lease_s, hold_s, n_verdicts = tonumber(ARGV[17]), tonumber(ARGV[18]), tonumber(ARGV[19])
  local recorded = {}
  for v = 0, n_verdicts - 1 do
    local rec = record(KEYS[5 + 2 * v], KEYS[6 + 2 * v], 20 + 10 * v)
    table.insert(recorded, rec[1])
    table.insert(recorded, rec[2])
  end
  local tat, last, granted, paused_until, pstart, pcount = 0, 0, 0, 0, '', 0
  local older, offset = {}, 0  -- stored slots from the offset-th latest on, newest first
  if has_key then
    local h = redis.call('HMGET', KEYS[1], 'tat', 'last_slot', 'paused_until', 'granted', 'period_start', 'period_count')
    tat, last, paused_until = tonumber(h[1]) or 0, tonumber(h[2]) or 0, tonumber(h[3]) or 0
    granted, pstart, pcount = tonumber(h[4]) or 0, h[5] or '', tonumber(h[6]) or 0
    if has_limit and burst > 1 then
      redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', f(now - window))
      offset = math.max(0, permits - count)
      local z = redis.call('ZREVRANGE', KEYS[2], offset, permits - 1, 'WITHSCORES')
      for i = 2, #z, 2 do older[#older + 1] = tonumber(z[i]) end
    end
  end
  local paused = 0
  if paused_until > now then paused = 1 end
  local r, gen_before
  if has_breaker then
    policy_from(11)
    r = load(KEYS[3])
    gen_before = r.gen
  end
  local n, grants, slots, refusal, leased, acquired = 0, {}, {}, nil, false, false
  local kind, state = '', ''
  for j = 0, count - 1 do
    local slot = math.max(now, paused_until)
    if has_limit then
      slot = math.max(slot, tat - (burst - 1) * interval, last)
      if burst > 1 then  -- the permits-th latest slot, this batch's own included
        local nth
        if j >= permits then nth = slots[j - permits + 1] else nth = older[permits - j - offset] end
        if nth then slot = math.max(slot, nth + window) end
      end
    end
    if has_key and slot - now > max_wait then
      refusal = {'defer', f(slot - now), paused, '', '', '', '', '', '', ''}
      break
    end
    local lease = ''
    if has_breaker then
      acquired = true
      local allowed, b_kind, b_state, b_lease, reopen_at, wait = acquire(r, KEYS[4], hold_s)
      if allowed == 0 then
        refusal = {b_kind, f(wait), paused, allowed, b_kind, r.gen, b_state, b_lease, reopen_at, f(wait)}
        break
      end
      kind, state, lease = b_kind, b_state, b_lease
      if lease ~= '' then  -- at once, so the next acquire counts it in flight
        redis.call('ZADD', KEYS[4], f(now + lease_s), lease)
        leased = true
      end
    end
    if has_key and has_limit then
      tat, last, granted = math.max(tat, slot) + interval, slot, granted + 1
      -- for the status page (as ratelimit.reserve): the policy last used, grants per epoch-aligned period
      local start = f(math.floor(slot / window) * window)
      if start == pstart then pcount = pcount + 1 else pstart, pcount = start, 1 end
      slots[#slots + 1] = slot
    end
    n = n + 1
    table.insert(grants, f(slot - now))
    table.insert(grants, lease)
  end
  local gen = ''
  if acquired then  -- a refused slot leaves the breaker untouched
    -- leases are issued only when closed, and advance() never closes: gen cannot have changed under them
    save(r, gen_before, KEYS[3], KEYS[4])
    if leased then redis.call('PEXPIRE', KEYS[4], TTL_MS) end
    gen = r.gen
  end
  if #slots > 0 then
    redis.call('HSET', KEYS[1], 'tat', f(tat), 'last_slot', f(last), 'granted', granted, 'period_start', pstart,
               'period_count', pcount, 'limit_permits', permits, 'limit_window', f(window), 'limit_burst', burst)
    redis.call('PEXPIRE', KEYS[1], TTL_MS)
    if burst > 1 then
      local seq = redis.call('HINCRBY', KEYS[1], 'seq', #slots) - #slots
      local z = {}
      for i, slot in ipairs(slots) do
        table.insert(z, f(slot))
        table.insert(z, tostring(seq + i))
      end
      redis.call('ZADD', KEYS[2], unpack(z))
      redis.call('PEXPIRE', KEYS[2], TTL_MS)
    end
  end
  local reply = {n, paused, kind, gen, state, 0, '', '', '', '', '', '', '', '', '', ''}
  if refusal then
    reply[6] = 1
    for i = 1, 10 do reply[6 + i] = refusal[i] end
  end
  for _, x in ipairs(grants) do table.insert(reply, x) end
  for _, x in ipairs(recorded) do table.insert(reply, x) end
  return reply
elseif op == 'pause' then
  local seconds = tonumber(ARGV[2])
  local paused = tonumber(redis.call('HGET', KEYS[1], 'paused_until')) or 0
  local until_ = math.max(paused, now + seconds)
  redis.call('HSET', KEYS[1], 'paused_until', f(until_), 'last_retry_after', f(seconds))
  redis.call('PEXPIRE', KEYS[1], TTL_MS)
  return f(until_)
elseif op == 'record' then
  return record(KEYS[1], KEYS[2], 2)
elseif op == 'reset' then
  local r = load(KEYS[1])
  local gen_before = r.gen
  r = {state = 'closed', gen = r.gen + 1, opened_until = 0, half_open_since = 0, trials_issued = 0,
       trial_successes = 0, trial_failures = 0, outcomes = '', seq = 0, changed_at = now}
  save(r, gen_before, KEYS[1], KEYS[2])
  return 'ok'
end
return redis.error_reply('unknown op ' .. tostring(op))
"""

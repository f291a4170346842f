-- count admissions (limiter slot, bulkhead place and breaker permit, granted only together),
-- stopping at the first refusal, after recording the verdicts; the port of admission.admit_batch.
local recorded = {}
for _, v in ipairs(req.verdicts or {}) do table.insert(recorded, apply_verdict(v)) end
local count, lim = req.count, req.limit  -- lim = {permits, window, interval, burst} or nil
local rl_hash = req.limit_key and key('rl', req.limit_key)
local tat, last, granted, leased, paused_until, pstart, pcount = 0, 0, 0, 0, 0, '', 0
local older, offset = {}, 0  -- stored slots from the offset-th latest on, newest first
if rl_hash then
  local h = redis.call('HMGET', rl_hash, 'tat', 'last_slot', 'paused_until', 'granted', 'period_start',
                       'period_count', 'leased')
  tat, last, paused_until = tonumber(h[1]) or 0, tonumber(h[2]) or 0, tonumber(h[3]) or 0
  granted, pstart, pcount, leased = tonumber(h[4]) or 0, h[5] or '', tonumber(h[6]) or 0, tonumber(h[7]) or 0
  if lim and lim[4] > 1 then
    redis.call('ZREMRANGEBYSCORE', rl_hash .. ':z', '-inf', f(now - lim[2]))
    offset = math.max(0, lim[1] - count)
    local z = redis.call('ZREVRANGE', rl_hash .. ':z', offset, lim[1] - 1, 'WITHSCORES')
    for i = 2, #z, 2 do older[#older + 1] = tonumber(z[i]) end
  end
end
local paused = rl_hash ~= nil and paused_until > now
local bulkhead = rl_hash and req.max_in_flight
local in_bulkhead = 0
if bulkhead then in_bulkhead = live(rl_hash .. ':f') end
local r, br_row, br_leases, br_in_flight
if req.breaker_key then
  br_row = breaker_row(key('br', req.breaker_key))
  r, br_leases = br_row.r, br_row.leases
  br_in_flight = live(br_leases)
end
local grants, slots, refusal, asked, touched = {}, {}, nil, false, false
for j = 0, count - 1 do
  local slot = math.max(now, paused_until)
  if lim then
    slot = math.max(slot, tat - (lim[4] - 1) * lim[3], last)
    if lim[4] > 1 then  -- the permits-th latest slot, this batch's own included
      local nth
      if j >= lim[1] then nth = slots[j - lim[1] + 1] else nth = older[lim[1] - j - offset] end
      if nth then slot = math.max(slot, nth + lim[2]) end
    end
  end
  if rl_hash and slot - now > req.max_wait then
    refusal = {reason = 'defer', wait = f(slot - now), paused = paused}
    break
  end
  if bulkhead and in_bulkhead >= bulkhead then
    refusal = {reason = 'full', wait = f(req.full_s), paused = paused}
    break
  end
  local decision = nil
  if r then
    asked = true
    decision = acquire(r, req.breaker, br_in_flight)
    if not decision.allowed then
      refusal = {reason = decision.kind, wait = decision.wait, paused = paused, decision = decision}
      break
    end
    if decision.lease ~= '' then  -- at once, so the next acquire counts it in flight
      redis.call('ZADD', br_leases, f(now + req.lease_s), decision.lease)
      br_in_flight = br_in_flight + 1
    end
  end
  local lease = ''
  if bulkhead then
    leased = leased + 1
    lease = tostring(leased)
    redis.call('ZADD', rl_hash .. ':f', f(now + req.lease_s), lease)
    in_bulkhead = in_bulkhead + 1
    touched = true
  end
  if lim then
    tat, last, granted = math.max(tat, slot) + lim[3], slot, granted + 1
    -- for the status page (as limiter.reserve): the policy last used, grants per epoch-aligned period
    local start = f(math.floor(slot / lim[2]) * lim[2])
    if start == pstart then pcount = pcount + 1 else pstart, pcount = start, 1 end
    slots[#slots + 1] = slot
    touched = true
  end
  table.insert(grants, {wait = f(slot - now), decision = decision, bulkhead_lease = lease})
end
if asked then  -- a refused slot leaves the breaker untouched
  -- leases are issued only when closed, and advance() never closes: gen cannot have changed under them
  settle(br_row)
  redis.call('PEXPIRE', br_leases, TTL_MS)
end
save_breakers()
if touched then
  if lim then
    redis.call('HSET', rl_hash, 'tat', f(tat), 'last_slot', f(last), 'granted', granted, 'leased', leased,
               'period_start', pstart, 'period_count', pcount, 'limit_permits', lim[1],
               'limit_window', f(lim[2]), 'limit_burst', lim[4])
  else
    redis.call('HSET', rl_hash, 'tat', f(tat), 'last_slot', f(last), 'granted', granted, 'leased', leased)
  end
  redis.call('PEXPIRE', rl_hash, TTL_MS)
  if bulkhead then redis.call('PEXPIRE', rl_hash .. ':f', TTL_MS) end
  if lim and lim[4] > 1 and #slots > 0 then
    local seq = redis.call('HINCRBY', rl_hash, 'seq', #slots) - #slots
    local z = {}
    for i, slot in ipairs(slots) do
      table.insert(z, f(slot))
      table.insert(z, tostring(seq + i))
    end
    redis.call('ZADD', rl_hash .. ':z', unpack(z))
    redis.call('PEXPIRE', rl_hash .. ':z', TTL_MS)
  end
end
return cjson.encode({granted = grants, refused = refusal or false, paused = paused, recorded = recorded})

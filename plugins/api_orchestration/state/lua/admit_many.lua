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
-- a multi-window key: its longer windows, each in a hash of its own (admission.window_key), read
-- like the key's own: ws[i] = {hash, lim, tat, last, granted, pstart, pcount, older, offset, slots}
local ws = {}
for i, m in ipairs(req.more or {}) do
  local w = {hash = key('rl', m[1]), lim = {m[2], m[3], m[4], m[5]}, older = {}, offset = 0, slots = {}}
  local h = redis.call('HMGET', w.hash, 'tat', 'last_slot', 'granted', 'period_start', 'period_count')
  w.tat, w.last, w.granted = tonumber(h[1]) or 0, tonumber(h[2]) or 0, tonumber(h[3]) or 0
  w.pstart, w.pcount = h[4] or '', tonumber(h[5]) or 0
  if w.lim[4] > 1 then
    redis.call('ZREMRANGEBYSCORE', w.hash .. ':z', '-inf', f(now - w.lim[2]))
    w.offset = math.max(0, w.lim[1] - count)
    local z = redis.call('ZREVRANGE', w.hash .. ':z', w.offset, w.lim[1] - 1, 'WITHSCORES')
    for k = 2, #z, 2 do w.older[#w.older + 1] = tonumber(z[k]) end
  end
  ws[i] = w
end
-- the earliest slot a window allows after slot (limiter.next_slot, without the pause: the key's own)
local function window_slot(slot, lim, tat_, last_, j, added, older_, offset_)
  slot = math.max(slot, tat_ - (lim[4] - 1) * lim[3], last_)
  if lim[4] > 1 then  -- the permits-th latest slot, this batch's own included
    local nth
    if j >= lim[1] then nth = added[j - lim[1] + 1] else nth = older_[lim[1] - j - offset_] end
    if nth then slot = math.max(slot, nth + lim[2]) end
  end
  return slot
end
-- book slot in a window (limiter.reserve): returns tat, last, granted, pstart, pcount
local function window_reserve(slot, lim, tat_, granted_, pstart_, pcount_, added)
  local start = f(math.floor(slot / lim[2]) * lim[2])
  if start == pstart_ then pcount_ = pcount_ + 1 else pstart_, pcount_ = start, 1 end
  added[#added + 1] = slot
  return math.max(tat_, slot) + lim[3], slot, granted_ + 1, pstart_, pcount_
end
local function save_slots(hash, lim, added)
  if lim[4] > 1 and #added > 0 then
    local seq = redis.call('HINCRBY', hash, 'seq', #added) - #added
    local z = {}
    for i, slot in ipairs(added) do
      table.insert(z, f(slot))
      table.insert(z, tostring(seq + i))
    end
    redis.call('ZADD', hash .. ':z', unpack(z))
    redis.call('PEXPIRE', hash .. ':z', TTL_MS)
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
  if lim then slot = window_slot(slot, lim, tat, last, j, slots, older, offset) end
  for _, w in ipairs(ws) do  -- the earliest slot every window allows
    slot = window_slot(slot, w.lim, w.tat, w.last, j, w.slots, w.older, w.offset)
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
    -- period_*: for the status page (as limiter.reserve), grants per epoch-aligned period
    tat, last, granted, pstart, pcount = window_reserve(slot, lim, tat, granted, pstart, pcount, slots)
    touched = true
  end
  for _, w in ipairs(ws) do
    w.tat, w.last, w.granted, w.pstart, w.pcount =
      window_reserve(slot, w.lim, w.tat, w.granted, w.pstart, w.pcount, w.slots)
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
  if lim then save_slots(rl_hash, lim, slots) end
  for _, w in ipairs(ws) do
    if #w.slots > 0 then
      local l = w.lim
      redis.call('HSET', w.hash, 'tat', f(w.tat), 'last_slot', f(w.last), 'granted', w.granted, 'period_start',
                 w.pstart, 'period_count', w.pcount, 'limit_permits', l[1], 'limit_window', f(l[2]), 'limit_burst', l[4])
      redis.call('PEXPIRE', w.hash, TTL_MS)
      save_slots(w.hash, l, w.slots)
    end
  end
end
return cjson.encode({granted = grants, refused = refusal or false, paused = paused, recorded = recorded})

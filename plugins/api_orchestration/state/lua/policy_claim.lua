-- claim a key for a policy; the port of resilience.policy_claims.claim
local hash = key('pol', req.kind .. ':' .. req.name)
local h = redis.call('HMGET', hash, 'policy', 'owner', 'seen_at')
local policy, owner, seen = h[1] or '', h[2] or '', tonumber(h[3]) or 0
if policy ~= '' and policy ~= req.policy and owner ~= req.owner and now - seen < req.ttl then
  return cjson.encode({ok = false, policy = policy, owner = owner})
end
if policy ~= req.policy or owner == '' then policy, owner = req.policy, req.owner end
redis.call('HSET', hash, 'policy', policy, 'owner', owner, 'seen_at', f(now))
redis.call('PEXPIRE', hash, TTL_MS)
return cjson.encode({ok = true, policy = policy, owner = owner})

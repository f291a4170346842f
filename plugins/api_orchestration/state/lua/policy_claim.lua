-- claim keys for policies, each as resilience.policy_claims.claim (its port): req.claims is a list of
-- {kind, name, policy}; a conflicting claim changes nothing
local results = {}
for i, c in ipairs(req.claims) do
  local hash = key('pol', c[1] .. ':' .. c[2])
  local h = redis.call('HMGET', hash, 'policy', 'owner', 'seen_at')
  local policy, owner, seen = h[1] or '', h[2] or '', tonumber(h[3]) or 0
  if policy ~= '' and policy ~= c[3] and owner ~= req.owner and now - seen < req.ttl then
    results[i] = {ok = false, policy = policy, owner = owner}
  else
    if policy ~= c[3] or owner == '' then policy, owner = c[3], req.owner end
    redis.call('HSET', hash, 'policy', policy, 'owner', owner, 'seen_at', f(now))
    redis.call('PEXPIRE', hash, TTL_MS)
    results[i] = {ok = true, policy = policy, owner = owner}
  end
end
return cjson.encode({results = results})

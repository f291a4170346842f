-- the shared token of an OAuth2 connection, or the single-flight lease to fetch one; the port of
-- resilience.tokens.decide
local hash = key('tok', req.name)
local h = redis.call('HMGET', hash, 'entry', 'expires_at', 'fingerprint', 'lease_holder', 'lease_until')
local entry, expires_at, fingerprint = h[1] or '', tonumber(h[2]), h[3] or ''
local holder, until_ = h[4] or '', tonumber(h[5]) or 0
local usable = entry ~= '' and fingerprint ~= '' and (req.reject == nil or fingerprint ~= req.reject)
  and (expires_at == nil or now < expires_at - req.margin)
if usable then return cjson.encode({kind = 'use', entry = entry, wait = '0'}) end
if holder ~= '' and holder ~= req.holder and until_ > now then
  return cjson.encode({kind = 'wait', entry = '', wait = f(until_ - now)})
end
redis.call('HSET', hash, 'lease_holder', req.holder, 'lease_until', f(now + req.lease_s))
redis.call('PEXPIRE', hash, TTL_MS)
return cjson.encode({kind = 'fetch', entry = entry, wait = '0'})

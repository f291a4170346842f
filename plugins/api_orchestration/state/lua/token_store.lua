-- keep a fetched token (when req.entry is set) and free the holder's lease; resilience.tokens.store/release
local hash = key('tok', req.name)
if req.entry then
  redis.call('HSET', hash, 'entry', req.entry, 'fingerprint', req.fingerprint)
  if req.expires_at then redis.call('HSET', hash, 'expires_at', f(req.expires_at))
  else redis.call('HDEL', hash, 'expires_at') end
end
if redis.call('HGET', hash, 'lease_holder') == req.holder then
  redis.call('HSET', hash, 'lease_holder', '', 'lease_until', '0')
end
redis.call('PEXPIRE', hash, TTL_MS)
return cjson.encode({ok = true})

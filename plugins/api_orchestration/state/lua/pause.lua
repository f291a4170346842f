-- pause a limiter key for every caller (a Retry-After); pauses only ever extend
local hash = key('rl', req.limit_key)
local paused = tonumber(redis.call('HGET', hash, 'paused_until')) or 0
local until_ = math.max(paused, now + req.seconds)
redis.call('HSET', hash, 'paused_until', f(until_), 'last_retry_after', f(req.seconds))
redis.call('PEXPIRE', hash, TTL_MS)
return cjson.encode({paused_until = f(until_)})

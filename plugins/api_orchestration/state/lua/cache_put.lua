-- store one response-cache entry in a scope, keeping the scope under max_total bytes.
-- Keys: the scope's sizes hash key('ca', scope) (entry key -> size), its expiry set ':z' (score: expiry),
-- its byte total ':t', and each entry's body ':e:<key>' (a string with its own PEXPIRE).
local hash = key('ca', req.scope)
local zset, total_key = hash .. ':z', hash .. ':t'
local function entry_key(k) return hash .. ':e:' .. k end
local function drop(k)
  local size = tonumber(redis.call('HGET', hash, k)) or 0
  redis.call('HDEL', hash, k)
  redis.call('ZREM', zset, k)
  redis.call('DEL', entry_key(k))
  redis.call('DECRBY', total_key, size)
end
for _, k in ipairs(redis.call('ZRANGEBYSCORE', zset, '-inf', f(now))) do drop(k) end
if redis.call('HEXISTS', hash, req.key) == 1 then drop(req.key) end
local total = tonumber(redis.call('GET', total_key)) or 0
if req.size > req.max_total then
  return cjson.encode({stored = false, evicted = 0, total = total})
end
local evicted = 0
while total + req.size > req.max_total do
  local first = redis.call('ZRANGE', zset, 0, 0)  -- the entry nearest expiry
  if #first == 0 then break end
  drop(first[1])
  evicted = evicted + 1
  total = tonumber(redis.call('GET', total_key)) or 0
end
local expires = now + req.keep
local keep_ms = math.max(math.ceil(req.keep * 1000), 1)
redis.call('SET', entry_key(req.key), req.body, 'PX', keep_ms)
redis.call('ZADD', zset, f(expires), req.key)
redis.call('HSET', hash, req.key, req.size)
total = redis.call('INCRBY', total_key, req.size)
-- the scope's bookkeeping lives as long as its longest-lived entry
local last = redis.call('ZRANGE', zset, -1, -1, 'WITHSCORES')
local live_ms = math.max(math.ceil((tonumber(last[2]) - now) * 1000), keep_ms)
for _, name in ipairs({hash, zset, total_key}) do redis.call('PEXPIRE', name, live_ms) end
return cjson.encode({stored = true, evicted = evicted, total = total})

-- The apply gate: decides one apply atomically.
-- KEYS: config, count, users, free. ARGV: user id.
-- Answers {slot, topic} or {code, ''}: -1 unknown event, -2 not open, -3 closed,
-- -4 duplicate, -5 sold out, -6 recovering.
-- Time comes from the Redis server, so every api replica sees the same window. The counter
-- never passes the limit: `count < limit` is checked before INCR, so `count` is the highest
-- slot ever handed out.
local cfg = redis.call('HMGET', KEYS[1], 'limit', 'per_user', 'start_ms', 'end_ms', 'recovering', 'topic')
local limit = tonumber(cfg[1])
if not limit then return {-1, ''} end
if cfg[5] == '1' then return {-6, ''} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now < tonumber(cfg[3]) then return {-2, ''} end
if now >= tonumber(cfg[4]) then return {-3, ''} end
local per_user = tonumber(cfg[2]) or 1
local user = ARGV[1]
if per_user <= 1 then
  if redis.call('SISMEMBER', KEYS[3], user) == 1 then return {-4, ''} end
else
  if (tonumber(redis.call('HGET', KEYS[3], user)) or 0) >= per_user then return {-4, ''} end
end
local slot = tonumber(redis.call('LPOP', KEYS[4]))
if not slot then
  local count = tonumber(redis.call('GET', KEYS[2])) or 0
  if count >= limit then return {-5, ''} end
  slot = redis.call('INCR', KEYS[2])
end
if per_user <= 1 then
  redis.call('SADD', KEYS[3], user)
else
  redis.call('HINCRBY', KEYS[3], user, 1)
end
return {slot, cfg[6]}

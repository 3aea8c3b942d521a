-- Writes back an event's counters restored from SQL.
-- KEYS: config, count, users, free, persisted. ARGV: count, persisted, settle_ms, number of
-- free slots, the free slots, then the users. Writes only while the event is still marked
-- recovering and the mark is at least `settle_ms` old (so that records issued just before
-- the loss have reached the broker). Answers 1 restored, -1 not recovering, -2 too early.
local mark = redis.call('HMGET', KEYS[1], 'recovering', 'recovering_since_ms')
if mark[1] ~= '1' then return -1 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now - (tonumber(mark[2]) or 0) < tonumber(ARGV[3]) then return -2 end
redis.call('DEL', KEYS[3], KEYS[4])
redis.call('SET', KEYS[2], ARGV[1])
redis.call('SET', KEYS[5], ARGV[2])
local free = tonumber(ARGV[4])
for i = 5, 4 + free do redis.call('RPUSH', KEYS[4], ARGV[i]) end
for i = 5 + free, #ARGV do redis.call('SADD', KEYS[3], ARGV[i]) end
redis.call('HDEL', KEYS[1], 'recovering', 'recovering_since_ms')
return 1

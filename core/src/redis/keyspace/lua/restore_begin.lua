-- Starts writing back an event's state from SQL. KEYS: config, count, users, free, unwritten,
-- persisted. ARGV: settle_ms, token.
-- Only while the event is marked recovering and the mark is at least `settle_ms` old (so
-- that records issued before the loss have reached the broker). Clears the counters and
-- records the token and the server: the chunks and the finish that follow must carry the
-- same token on the same server, so two consumers restoring at once, or a failover in the
-- middle, can never leave a half-restored event open.
-- Answers 1 begun, -1 not recovering, -2 too early.
local mark = redis.call('HMGET', KEYS[1], 'recovering', 'recovering_since_ms')
if mark[1] ~= '1' then return -1 end
if now_ms() - (tonumber(mark[2]) or 0) < tonumber(ARGV[1]) then return -2 end
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
redis.call('SET', KEYS[2], 0)
redis.call('SET', KEYS[6], 0)
redis.call('HSET', KEYS[1], 'restoring', ARGV[2], 'restore_server', server_id())
return 1

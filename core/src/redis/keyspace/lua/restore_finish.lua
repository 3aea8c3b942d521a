-- Finishes a shard's restore: sets the counter (slots of its stride handed out), stamps the current server and reopens the gate.
-- KEYS: config, count. ARGV: token, count, the highest slot with a row.
-- Answers 1 finished, -1 taken over or the server changed, -2 the limit is below the highest
-- slot with a row (the event stays recovering until the limit is raised).
local m = redis.call('HMGET', KEYS[1], 'recovering', 'restoring', 'restore_server', 'limit')
if m[1] ~= '1' or m[2] ~= ARGV[1] or m[3] ~= server_id() then return -1 end
if tonumber(ARGV[3] or ARGV[2]) > tonumber(m[4]) then return -2 end
redis.call('SET', KEYS[2], ARGV[2])
-- `lease_ms` starts again too: the apis raise it with their next gate call, so one api that
-- once ran with a long timeout does not slow every later restore.
redis.call('HDEL', KEYS[1], 'recovering', 'recovering_since_ms', 'recovering_server', 'restoring', 'restore_owner',
  'restore_server', 'restore_beat_ms', 'lease_ms', 'restore_chunk')
redis.call('HSET', KEYS[1], 'server', server_id())
return 1

-- Finishes a shard's restore: sets the counter (slots of its stride handed out), stamps the current server and reopens the gate.
-- KEYS: config, count. ARGV: token, count, the highest slot with a row.
-- Answers DONE (finished), TAKEN_OVER (taken over, or the server changed), LIMIT_BELOW_ROWS
-- (the limit is below the highest slot with a row: the event stays recovering until it is
-- raised).
local m = read_config(KEYS[1], {'recovering', 'restoring', 'restore_server', 'limit'})
if m.recovering ~= '1' or m.restoring ~= ARGV[1] or m.restore_server ~= server_id() then return ANSWER.TAKEN_OVER end
if tonumber(ARGV[3] or ARGV[2]) > tonumber(m.limit) then return ANSWER.LIMIT_BELOW_ROWS end
redis.call('SET', KEYS[2], ARGV[2])
-- `lease_ms` starts again too: the apis raise it with their next gate call, so one api that
-- once ran with a long timeout does not slow every later restore.
redis.call('HDEL', KEYS[1], 'recovering', 'recovering_since_ms', 'recovering_server', 'restoring', 'restore_owner',
  'restore_server', 'restore_beat_ms', 'lease_ms', 'restore_chunk')
redis.call('HSET', KEYS[1], 'server', server_id())
return ANSWER.DONE

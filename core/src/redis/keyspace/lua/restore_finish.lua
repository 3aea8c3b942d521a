-- Finishes a shard's restore: sets the counter (slots of its stride handed out), stamps the current server and reopens the gate.
-- KEYS: config, count, holder_changes, held. ARGV: token, count, the highest slot with a row.
-- Answers DONE (finished), TAKEN_OVER (taken over, or the server changed), LIMIT_BELOW_ROWS
-- (the limit is below the highest slot with a row: the event stays recovering until it is
-- raised).
local K = named(KEYS, {'config', 'count', 'holder_changes', 'held'})
local A = named(ARGV, {'token', 'count', 'highest'})
local m = read_config(K.config, {'recovering', 'restoring', 'restore_server', 'limit'})
if m.recovering ~= '1' or m.restoring ~= A.token or m.restore_server ~= server_id() then return ANSWER.TAKEN_OVER end
if tonumber(A.highest or A.count) > tonumber(m.limit) then return ANSWER.LIMIT_BELOW_ROWS end
redis.call('SET', K.count, A.count)
-- `lease_ms` starts again too: the apis raise it with their next gate call, so one api that
-- once ran with a long timeout does not slow every later restore.
redis.call('HDEL', K.config, 'recovering', 'recovering_since_ms', 'recovering_server', 'restoring', 'restore_owner',
  'restore_server', 'restore_beat_ms', 'lease_ms', 'restore_chunk')
redis.call('HSET', K.config, 'server', server_id())
-- The chunks wrote entries without logging them: an api's holders from before read all again.
holders_reset(K.config, K.holder_changes, K.held)
return ANSWER.DONE

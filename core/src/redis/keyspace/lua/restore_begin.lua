-- Starts writing back a shard's state from SQL. KEYS: config, count, users, free, unwritten,
-- persisted, held, grants, grant_deadlines, accepted, refused. ARGV: not_after_ms, token, owner
-- (the restoring process: it may take over its own interrupted restore at once), epoch (the
-- same for every shard of the restore: grants of the epoch before are void).
-- Only while the event is marked recovering and the mark was made at or before
-- `not_after_ms` minus the longest delivery lease any api uses (`lease_ms`): the caller
-- passes the time its drain check began minus its settle time, so every record issued before
-- the loss had reached the broker before that check. Clears the counters and records the
-- token, a heartbeat and the server: the chunks and the finish that follow must carry the
-- same token on the same server, so a failover in the middle can never leave a half-restored
-- event open, and another consumer cannot take a restore over while its heartbeat is fresh.
-- Answers 1 begun, -1 not recovering, -2 too early, -3 another restore is under way.
local mark = redis.call('HMGET', KEYS[1], 'recovering', 'recovering_since_ms', 'lease_ms', 'restoring', 'restore_beat_ms',
  'restore_owner', 'server', 'recovering_server')
if mark[1] ~= '1' then return -1 end
local now = now_ms()
-- Fencing here too: a mark made on an earlier server starts its settle time again on this one.
local server = server_id()
if mark[7] ~= server and mark[8] ~= server then
  redis.call('HSET', KEYS[1], 'recovering_since_ms', now, 'recovering_server', server)
  return -2
end
if mark[4] and now - (tonumber(mark[5]) or 0) < 10000 and mark[6] ~= ARGV[3] then return -3 end
if (tonumber(mark[2]) or 0) + (tonumber(mark[3]) or 0) > tonumber(ARGV[1]) then return -2 end
-- Every shard's stock is rebuilt from SQL: grants between shards in flight are void.
redis.call('UNLINK', KEYS[3], KEYS[4], KEYS[5], KEYS[8], KEYS[9], KEYS[10], KEYS[11])
redis.call('SET', KEYS[2], 0)
redis.call('SET', KEYS[6], 0)
redis.call('SET', KEYS[7], 0)
redis.call('HINCRBY', KEYS[1], 'holders_version', 1)
redis.call('HSET', KEYS[1], 'restoring', ARGV[2], 'restore_owner', ARGV[3], 'restore_server', server, 'restore_beat_ms', now,
  'epoch', ARGV[4], 'restore_chunk', 0)
return 1

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
-- Answers DONE (begun), NOTHING (not recovering), TOO_EARLY, BUSY (another restore is under
-- way).
local mark = read_config(KEYS[1], {
  'recovering', 'recovering_since_ms', 'lease_ms', 'restoring', 'restore_beat_ms', 'restore_owner', 'server', 'recovering_server',
})
if mark.recovering ~= '1' then return ANSWER.NOTHING end
local now = now_ms()
-- Fencing here too: a mark made on an earlier server starts its settle time again on this one.
local server = server_id()
if mark.server ~= server and mark.recovering_server ~= server then
  mark_recovering(KEYS[1])
  return ANSWER.TOO_EARLY
end
if mark.restoring and now - (tonumber(mark.restore_beat_ms) or 0) < 10000 and mark.restore_owner ~= ARGV[3] then return ANSWER.BUSY end
if (tonumber(mark.recovering_since_ms) or 0) + (tonumber(mark.lease_ms) or 0) > tonumber(ARGV[1]) then return ANSWER.TOO_EARLY end
-- Every shard's stock is rebuilt from SQL: grants between shards in flight are void.
redis.call('UNLINK', KEYS[3], KEYS[4], KEYS[5], KEYS[8], KEYS[9], KEYS[10], KEYS[11])
redis.call('SET', KEYS[2], 0)
redis.call('SET', KEYS[6], 0)
redis.call('SET', KEYS[7], 0)
redis.call('HINCRBY', KEYS[1], 'holders_version', 1)
redis.call('HSET', KEYS[1], 'restoring', ARGV[2], 'restore_owner', ARGV[3], 'restore_server', server, 'restore_beat_ms', now,
  'epoch', ARGV[4], 'restore_chunk', 0)
return ANSWER.DONE

-- Starts writing back a shard's state from SQL. KEYS: config, count, users, free, unwritten,
-- persisted, held, grants, grant_deadlines, accepted, refused, holder_changes. ARGV: not_after_ms, token, owner
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
local K = named(KEYS, {
  'config', 'count', 'users', 'free', 'unwritten', 'persisted', 'held', 'grants', 'grant_deadlines',
  'accepted', 'refused', 'holder_changes',
})
local A = named(ARGV, {'not_after_ms', 'token', 'owner', 'epoch'})
local mark = read_config(K.config, {
  'recovering', 'recovering_since_ms', 'lease_ms', 'restoring', 'restore_beat_ms', 'restore_owner', 'server', 'recovering_server',
})
if mark.recovering ~= '1' then return ANSWER.NOTHING end
local now = now_ms()
-- Fencing here too: a mark made on an earlier server starts its settle time again on this one.
local server = server_id()
if mark.server ~= server and mark.recovering_server ~= server then
  mark_recovering(K.config)
  return ANSWER.TOO_EARLY
end
if mark.restoring and now - (tonumber(mark.restore_beat_ms) or 0) < 10000 and mark.restore_owner ~= A.owner then return ANSWER.BUSY end
if (tonumber(mark.recovering_since_ms) or 0) + (tonumber(mark.lease_ms) or 0) > tonumber(A.not_after_ms) then return ANSWER.TOO_EARLY end
-- Every shard's stock is rebuilt from SQL: grants between shards in flight are void.
redis.call('UNLINK', K.users, K.free, K.unwritten, K.grants, K.grant_deadlines, K.accepted, K.refused)
redis.call('SET', K.count, 0)
redis.call('SET', K.persisted, 0)
redis.call('SET', K.held, 0)
holders_reset(K.config, K.holder_changes, K.held)
redis.call('HSET', K.config, 'restoring', A.token, 'restore_owner', A.owner, 'restore_server', server, 'restore_beat_ms', now,
  'epoch', A.epoch, 'restore_chunk', 0)
return ANSWER.DONE

-- Removes the state of an earlier object of an event's name, so that a new object of that
-- name starts from zero; only if that state is finished, checked and removed in one step so
-- that nothing can be issued in between (per shard: the caller checks every shard with
-- `check_only` first; the window is over, so no shard issues anything new meanwhile).
-- KEYS: config, count, users, free, unwritten, persisted, healed, held, the grant keys and the
-- holders' change log.
-- ARGV: the incarnation expected ('' for none), tombstone_ttl_s (0: no tombstone), check_only.
-- Answers DONE (removed, or removable with check_only), NOTHING (nothing there),
-- OTHER_INCARNATION, RECOVERING, STILL_OPEN, UNWRITTEN (coupons not yet written).
local K = named(KEYS, {
  'config', 'count', 'users', 'free', 'unwritten', 'persisted', 'healed', 'held', 'grants',
  'grant_deadlines', 'accepted', 'refused', 'holder_changes',
})
local A = named(ARGV, {'incarnation', 'tombstone_ttl_s', 'check_only'})
local cfg = read_config(K.config, {'limit', 'incarnation', 'recovering', 'end_ms', 'shards'})
if not cfg.limit then return ANSWER.NOTHING end
if (cfg.incarnation or '') ~= A.incarnation then return ANSWER.OTHER_INCARNATION end
if cfg.recovering == '1' then return ANSWER.RECOVERING end
if now_ms() < tonumber(cfg.end_ms) then return ANSWER.STILL_OPEN end
local issued
if (tonumber(cfg.shards) or 1) > 1 then
  issued = tonumber(redis.call('GET', K.held)) or 0
else
  issued = (tonumber(redis.call('GET', K.count)) or 0) - redis.call('LLEN', K.free)
end
local persisted = tonumber(redis.call('GET', K.persisted)) or 0
if redis.call('ZCARD', K.unwritten) > 0 or persisted < issued then return ANSWER.UNWRITTEN end
if A.check_only == '1' then return ANSWER.DONE end
redis.call('UNLINK', unpack(KEYS))
if tonumber(A.tombstone_ttl_s) > 0 then
  redis.call('HSET', K.config, 'deleted', '1')
  redis.call('EXPIRE', K.config, A.tombstone_ttl_s)
end
return ANSWER.DONE

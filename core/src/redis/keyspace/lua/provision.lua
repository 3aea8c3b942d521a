-- Writes the configuration of one shard of an event; never touches its counters.
-- KEYS: config, count, holder_changes, held. ARGV: limit, per_user, start_ms, end_ms, topic, recover_if_missing, paused,
-- incarnation ('' for none), shard, shards, epoch (written when the shard is created: the same
-- for every shard of an event, see `grant.lua`).
-- Answers {code, recovering, highest}: CREATED, UPDATED, UNCHANGED, CREATED_RECOVERING,
-- OTHER_INCARNATION (the configuration belongs to another object of the same name: nothing is
-- written), SHARDS_CHANGED (the event exists with another number of shards: nothing is
-- written), or BELOW_ISSUED when the new limit is below the highest slot this shard's counter
-- handed out (`highest`; nothing is written then); recovering is 1 while the shard is marked
-- recovering.
-- The incarnation is written when the event is created and never changed: it is part of the
-- key every record and row of the event carries. A configuration without one (made before
-- incarnations existed, or by the CLI) is kept as it is.
-- A new event records the server it lives on (`server`); an update never does, since that
-- would hide a server that went back in time from the gate's fencing check. A configuration
-- written before fencing existed (and its users in the old layout) is verified against SQL
-- like a server change: it is marked recovering.
local K = named(KEYS, {'config', 'count', 'holder_changes', 'held'})
local A = named(ARGV, {
  'limit', 'per_user', 'start_ms', 'end_ms', 'topic', 'recover_if_missing', 'paused', 'incarnation', 'shard',
  'shards', 'epoch',
})
local old = read_config(K.config, {
  'limit', 'per_user', 'start_ms', 'end_ms', 'topic', 'recovering', 'server', 'deleted', 'paused', 'incarnation', 'shards',
})
if old.deleted == '1' then
  -- The tombstone of a deleted event: the name is free again.
  redis.call('DEL', K.config)
  old = {}
end
if old.limit and old.incarnation and old.incarnation ~= A.incarnation then return {ANSWER.OTHER_INCARNATION, 0} end
local shard, shards = tonumber(A.shard), tonumber(A.shards)
if old.limit and (tonumber(old.shards) or 1) ~= shards then return {ANSWER.SHARDS_CHANGED, 0} end
local count = tonumber(redis.call('GET', K.count)) or 0
if count > 0 then
  local highest = stride_slot(count - 1, shard, shards)
  if tonumber(A.limit) < highest then return {ANSWER.BELOW_ISSUED, 0, highest} end
end
local recovering = 0
if old.recovering == '1' then recovering = 1 end
if old.limit and not old.server and old.recovering ~= '1' then
  mark_recovering(K.config)
  recovering = 1
end
if old.limit == A.limit and old.per_user == A.per_user and old.start_ms == A.start_ms and old.end_ms == A.end_ms and old.topic == A.topic
  and (old.paused or '0') == A.paused then
  return {ANSWER.UNCHANGED, recovering}
end
redis.call('HSET', K.config, 'limit', A.limit, 'per_user', A.per_user, 'start_ms', A.start_ms, 'end_ms', A.end_ms, 'topic', A.topic, 'paused', A.paused)
-- A new limit can reopen an event seen sold out: an api's snapshot of its holders must not
-- outlive it (`holders_version` counts every change of who may hold a slot). The slots it
-- opens are handed out from the counter, which logs no holder: the change log starts again.
if old.limit and old.limit ~= A.limit then holders_reset(K.config, K.holder_changes, K.held) end
if old.limit then return {ANSWER.UPDATED, recovering} end
if A.incarnation ~= '' then redis.call('HSET', K.config, 'incarnation', A.incarnation) end
-- `born` is the epoch it was created with, which a restore (a new epoch) leaves alone: what
-- is kept for the event's lifetime (Idempotency-Keys) is told from an earlier event's by it.
redis.call('HSET', K.config, 'shards', shards, 'shard', shard, 'epoch', A.epoch, 'born', A.epoch)
-- A new event's holders are versioned from the creation time (`holders_reset`), so an api's
-- holders of an earlier event of the same name (deleted, then created again) never match.
holders_reset(K.config, K.holder_changes, K.held)
if A.recover_if_missing == '1' then
  mark_recovering(K.config)
  return {ANSWER.CREATED_RECOVERING, 1}
end
redis.call('HSET', K.config, 'server', server_id())
return {ANSWER.CREATED, 0}

-- Gives part of this shard's stock to another shard that ran out (stock moves between shards,
-- so no apply is answered sold out while coupons remain on some shard).
-- KEYS: config, count, free, grants, grant_deadlines, holder_changes, held. ARGV: grant id, target shard, n, lease_ms,
-- shard, shards (the caller's layout).
-- Takes up to n slots: from the free list (dropping any above a lowered limit), then from the
-- counter's stride. The grant is recorded here, with a deadline, until it is settled: the
-- target takes it with its next gate call (`apply.lua`), and the api, or the consumer's
-- healing once the deadline passed, settles it (`settle_grant.lua`), so slots in flight are
-- never lost.
-- The grant carries the shards' epoch (set when the event is created and by every restore):
-- the target takes it only in the same epoch, so a grant made before a restore (or before
-- the event was deleted and created again) can never add stock afterwards.
-- A repeated call with the same id (a client that resent it) answers the recorded grant.
-- Answers {DONE, epoch, slots...} granted, {NOTHING} nothing to give, {RECOVERING},
-- {OTHER_LAYOUT}.
local K = named(KEYS, {'config', 'count', 'free', 'grants', 'grant_deadlines', 'holder_changes', 'held'})
local A = named(ARGV, {'grant', 'target', 'wanted', 'lease_ms', 'shard', 'shards'})
local cfg = read_config(K.config, {
  'limit', 'server', 'recovering', 'recovering_server', 'shards', 'shard', 'epoch',
})
local limit = tonumber(cfg.limit)
if not limit then return {ANSWER.NOTHING} end
local shard, shards = tonumber(A.shard), tonumber(A.shards)
if (tonumber(cfg.shards) or 1) ~= shards or (tonumber(cfg.shard) or 0) ~= shard then return {ANSWER.OTHER_LAYOUT} end
if fenced(K.config, cfg.server, cfg.recovering, cfg.recovering_server) then return {ANSWER.RECOVERING} end
local epoch = tonumber(cfg.epoch) or 0
local recorded = redis.call('HGET', K.grants, A.grant)
if recorded then
  local answer = {ANSWER.DONE, epoch}
  local first = true
  for slot in string.gmatch(recorded, '%d+') do
    if first then first = false else answer[#answer + 1] = tonumber(slot) end
  end
  return answer
end
local wanted = tonumber(A.wanted)
local slots = {}
while #slots < wanted do
  local slot = tonumber(redis.call('LPOP', K.free))
  if not slot then break end
  if slot <= limit then slots[#slots + 1] = slot end
end
local count = tonumber(redis.call('GET', K.count)) or 0
local taken = 0
while #slots < wanted do
  local slot = stride_slot(count + taken, shard, shards)
  if slot > limit then break end
  taken = taken + 1
  slots[#slots + 1] = slot
end
if taken > 0 then
  redis.call('INCRBY', K.count, taken)
  -- The counter's last slot: the holders' change log starts again (as in `apply.lua`).
  if stride_slot(count + taken, shard, shards) > limit then holders_reset(K.config, K.holder_changes, K.held) end
end
if #slots == 0 then return {ANSWER.NOTHING} end
redis.call('HSET', K.grants, A.grant, A.target .. ' ' .. table.concat(slots, ' '))
redis.call('ZADD', K.grant_deadlines, now_ms() + tonumber(A.lease_ms), A.grant)
local answer = {ANSWER.DONE, epoch}
for i, slot in ipairs(slots) do answer[i + 2] = slot end
return answer

-- Settles a grant this shard gave (`grant.lua`). KEYS: grants, grant_deadlines, free, config,
-- holder_changes, held.
-- ARGV: grant id, verdict: 'a' the target took it (the record goes), 'r' the target refused it
-- for good (`close_grant.lua`: its slots come back to this shard's free list, and
-- `holders_version` counts it: an event seen sold out may sell again, and an api's snapshot
-- of its holders must not outlive that).
-- Answers DONE (settled) or NOTHING (no such grant: settled already, or a restore rebuilt the
-- stock).
local K = named(KEYS, {'grants', 'grant_deadlines', 'free', 'config', 'holder_changes', 'held'})
local A = named(ARGV, {'grant', 'verdict'})
local record = redis.call('HGET', K.grants, A.grant)
if not record then return ANSWER.NOTHING end
if A.verdict == 'r' then
  local slots = {}
  for slot in string.gmatch(record, '%d+') do slots[#slots + 1] = slot end
  table.remove(slots, 1) -- the target shard
  if #slots > 0 then
    redis.call('RPUSH', K.free, unpack(slots))
    holders_changed(K.config, K.holder_changes, K.held, {})
  end
end
redis.call('HDEL', K.grants, A.grant)
redis.call('ZREM', K.grant_deadlines, A.grant)
return ANSWER.DONE

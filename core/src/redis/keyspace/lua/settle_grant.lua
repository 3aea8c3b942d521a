-- Settles a grant this shard gave (`grant.lua`). KEYS: grants, grant_deadlines, free, config.
-- ARGV: grant id, verdict: 'a' the target took it (the record goes), 'r' the target refused it
-- for good (`close_grant.lua`: its slots come back to this shard's free list, and
-- `holders_version` counts it: an event seen sold out may sell again, and an api's snapshot
-- of its holders must not outlive that).
-- Answers DONE (settled) or NOTHING (no such grant: settled already, or a restore rebuilt the
-- stock).
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then return ANSWER.NOTHING end
if ARGV[2] == 'r' then
  local slots = {}
  for slot in string.gmatch(record, '%d+') do slots[#slots + 1] = slot end
  table.remove(slots, 1) -- the target shard
  if #slots > 0 then
    redis.call('RPUSH', KEYS[3], unpack(slots))
    redis.call('HINCRBY', KEYS[4], 'holders_version', 1)
  end
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return ANSWER.DONE

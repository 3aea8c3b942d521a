-- Gives back the slot of a record that was certainly not written.
-- KEYS: users, free, unwritten, config, held. ARGV: user id, slot, deadline (of the delivery that
-- failed). A release changes the holders: `holders_version` counts it.
-- Answers DONE (released) or NOTHING (nothing to release).
-- Only the user's pending entry of exactly that slot, and only while its deadline is still
-- the failed delivery's: a repeated or stale release, or one racing a later delivery of the
-- same record (which may be written), cannot put a slot on the free list.
local member = unwritten_member(ARGV[2], ARGV[1])
if tonumber(redis.call('ZSCORE', KEYS[3], member)) ~= tonumber(ARGV[3]) then return ANSWER.NOTHING end
local entries = parse_entries(redis.call('HGET', KEYS[1], ARGV[1]))
for i, e in ipairs(entries) do
  if e[1] == ARGV[2] and e[2] == 'p' then
    table.remove(entries, i)
    store_entries(KEYS[1], ARGV[1], entries)
    redis.call('ZREM', KEYS[3], member)
    redis.call('LPUSH', KEYS[2], ARGV[2])
    redis.call('DECR', KEYS[5])
    redis.call('HINCRBY', KEYS[4], 'holders_version', 1)
    return ANSWER.DONE
  end
end
return ANSWER.NOTHING

-- Gives back the slot of a record that was certainly not written.
-- KEYS: users, free, unwritten, config, held, holder_changes. ARGV: user id, slot, deadline (of
-- the delivery that failed). A release changes the holders: `holders_version` counts it, and
-- the user goes in the holders' change log (`holders_changed`).
-- Answers DONE (released) or NOTHING (nothing to release).
-- Only the user's pending entry of exactly that slot, and only while its deadline is still
-- the failed delivery's: a repeated or stale release, or one racing a later delivery of the
-- same record (which may be written), cannot put a slot on the free list.
local K = named(KEYS, {'users', 'free', 'unwritten', 'config', 'held', 'holder_changes'})
local A = named(ARGV, {'user', 'slot', 'deadline_ms'})
local member = unwritten_member(A.slot, A.user)
if tonumber(redis.call('ZSCORE', K.unwritten, member)) ~= tonumber(A.deadline_ms) then return ANSWER.NOTHING end
local entries = parse_entries(redis.call('HGET', K.users, A.user))
for i, e in ipairs(entries) do
  if e[1] == A.slot and e[2] == 'p' then
    table.remove(entries, i)
    store_entries(K.users, A.user, entries)
    redis.call('ZREM', K.unwritten, member)
    redis.call('LPUSH', K.free, A.slot)
    redis.call('DECR', K.held)
    holders_changed(K.config, K.holder_changes, K.held, {A.user})
    return ANSWER.DONE
  end
end
return ANSWER.NOTHING

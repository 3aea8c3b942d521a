-- Gives back the slot of a record that was certainly not written.
-- KEYS: users, free, unwritten. ARGV: user id, slot. Answers 1 released, 0 nothing to release.
-- Only the user's pending entry of exactly that slot is removed, so a repeated or stale
-- release cannot put a slot on the free list twice or take another delivery's slot.
local entries = parse_entries(redis.call('HGET', KEYS[1], ARGV[1]))
for i, e in ipairs(entries) do
  if e[1] == ARGV[2] and e[2] == 'p' then
    table.remove(entries, i)
    store_entries(KEYS[1], ARGV[1], entries)
    redis.call('ZREM', KEYS[3], unwritten_member(ARGV[2], ARGV[1]))
    redis.call('LPUSH', KEYS[2], ARGV[2])
    return 1
  end
end
return 0

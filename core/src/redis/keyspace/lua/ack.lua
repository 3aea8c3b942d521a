-- The broker acknowledged the records of some entries of this shard.
-- KEYS: users. ARGV: user id, slot, user id, slot, ... (every user homed on this shard).
-- Answers how many entries changed: pending becomes acknowledged (it stays in `unwritten`
-- until its row is written); written but unconfirmed (the consumer was faster than this
-- acknowledgement) becomes written. Running it again changes nothing.
local K = named(KEYS, {'users'})
local changed = 0
for i = 1, #ARGV - 1, 2 do
  local user, slot = ARGV[i], ARGV[i + 1]
  local entries = parse_entries(redis.call('HGET', K.users, user))
  for _, e in ipairs(entries) do
    if e[1] == slot and (e[2] == 'p' or e[2] == 'x') then
      if e[2] == 'p' then e[2] = 'a' else e[2] = 'w' end
      store_entries(K.users, user, entries)
      changed = changed + 1
      break
    end
  end
end
return changed

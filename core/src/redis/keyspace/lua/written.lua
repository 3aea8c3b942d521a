-- The consumer wrote the rows of these entries. KEYS: users, unwritten, persisted, config.
-- ARGV: incarnation of the rows ('' for none), then user, slot, user, slot, ... Answers how
-- many entries became written; `persisted` grows by that many, so a redelivered row is never
-- counted twice. Rows of another incarnation (an earlier object of the same name) mark
-- nothing: the entries here are the current object's, whoever holds the same user and slot.
local K = named(KEYS, {'users', 'unwritten', 'persisted', 'config'})
local A = named(ARGV, {'incarnation'})
local incarnation = redis.call('HGET', K.config, 'incarnation') or ''
if incarnation ~= A.incarnation then return 0 end
local n = 0
for i = 2, #ARGV, 2 do
  local user, slot = ARGV[i], ARGV[i + 1]
  local entries = parse_entries(redis.call('HGET', K.users, user))
  for _, e in ipairs(entries) do
    if e[1] == slot and (e[2] == 'p' or e[2] == 'a') then
      e[2] = written_state(e[2])
      store_entries(K.users, user, entries)
      redis.call('ZREM', K.unwritten, unwritten_member(slot, user))
      n = n + 1
      break
    end
  end
end
if n > 0 then redis.call('INCRBY', K.persisted, n) end
return n

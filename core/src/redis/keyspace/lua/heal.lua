-- Settles entries whose delivery deadline passed without a row, once the consumer has
-- checked the topic is drained and looked each one up in SQL.
-- KEYS: users, free, unwritten, persisted, healed, config, held, holder_changes. ARGV: cutoff_ms,
-- then triples user, slot, verdict: 'w' the row exists (it was written but not marked), 'f' no row and no row holds
-- the slot (the slot goes back to the free list), 'k' no row for the user but the slot is
-- held by another row (the entry goes, the slot stays taken).
-- An entry whose deadline moved past the cutoff (delivered again meanwhile) is left alone.
-- Answers {healed, marked written}.
local K = named(KEYS, {'users', 'free', 'unwritten', 'persisted', 'healed', 'config', 'held', 'holder_changes'})
local A = named(ARGV, {'cutoff_ms'})
local cutoff = tonumber(A.cutoff_ms)
local healed, written = 0, 0
-- Users whose entry went: the holders' change log names them (`holders_changed`).
local gone = {}
for i = 2, #ARGV, 3 do
  local user, slot, verdict = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local member = unwritten_member(slot, user)
  local deadline = tonumber(redis.call('ZSCORE', K.unwritten, member))
  if deadline and deadline <= cutoff then
    local entries = parse_entries(redis.call('HGET', K.users, user))
    for j, e in ipairs(entries) do
      if e[1] == slot and (e[2] == 'p' or e[2] == 'a') then
        if verdict == 'w' then
          e[2] = written_state(e[2])
          written = written + 1
        else
          table.remove(entries, j)
          healed = healed + 1
          gone[#gone + 1] = user
          if verdict == 'f' then redis.call('LPUSH', K.free, slot) end
        end
        store_entries(K.users, user, entries)
        break
      end
    end
    redis.call('ZREM', K.unwritten, member)
  end
end
if written > 0 then redis.call('INCRBY', K.persisted, written) end
if healed > 0 then
  redis.call('INCRBY', K.healed, healed)
  -- `held` counts the shard's entries (a slot another row holds is counted with that row's
  -- entry).
  redis.call('DECRBY', K.held, healed)
  holders_changed(K.config, K.holder_changes, K.held, gone)
end
return {healed, written}

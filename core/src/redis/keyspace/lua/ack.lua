-- The broker acknowledged the record of the user's entry `slot`.
-- KEYS: users. ARGV: user id, slot. Answers 1 if the entry changed.
-- Pending becomes acknowledged (it stays in `unwritten` until its row is written); written
-- but unconfirmed (the consumer was faster than this acknowledgement) becomes written.
local entries = parse_entries(redis.call('HGET', KEYS[1], ARGV[1]))
for _, e in ipairs(entries) do
  if e[1] == ARGV[2] and (e[2] == 'p' or e[2] == 'x') then
    if e[2] == 'p' then e[2] = 'a' else e[2] = 'w' end
    store_entries(KEYS[1], ARGV[1], entries)
    return 1
  end
end
return 0

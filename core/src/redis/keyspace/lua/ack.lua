-- The broker acknowledged the record of the user's pending entry `slot`.
-- KEYS: users. ARGV: user id, slot. Answers 1 if the entry was pending.
-- The entry stays in `unwritten` until the consumer has written its row.
local entries = parse_entries(redis.call('HGET', KEYS[1], ARGV[1]))
for _, e in ipairs(entries) do
  if e[1] == ARGV[2] and e[2] == 'p' then
    e[2] = 'a'
    store_entries(KEYS[1], ARGV[1], entries)
    return 1
  end
end
return 0

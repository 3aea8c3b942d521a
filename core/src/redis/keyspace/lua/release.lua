-- Gives back the slot of a record that was certainly not written.
-- KEYS: config, users, free. ARGV: user id, slot. Answers 1 released, 0 nothing to release.
-- The slot goes back only if the user still holds a mark, so a repeated release cannot put
-- the same slot on the free list twice.
local per_user = tonumber(redis.call('HGET', KEYS[1], 'per_user')) or 1
local removed
if per_user <= 1 then
  removed = redis.call('SREM', KEYS[2], ARGV[1])
else
  local n = tonumber(redis.call('HGET', KEYS[2], ARGV[1])) or 0
  if n > 0 then
    if n == 1 then redis.call('HDEL', KEYS[2], ARGV[1]) else redis.call('HINCRBY', KEYS[2], ARGV[1], -1) end
    removed = 1
  else
    removed = 0
  end
end
if removed == 1 then redis.call('LPUSH', KEYS[3], ARGV[2]) end
return removed

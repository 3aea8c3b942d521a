-- Writes back one chunk of an event's rows and free slots. KEYS: config, users, free,
-- persisted. ARGV: token, n, then n pairs user, slot (rows), then free slots.
-- Answers 1 written, -1 the restore was taken over or the server changed (nothing written).
local m = redis.call('HMGET', KEYS[1], 'recovering', 'restoring', 'restore_server')
if m[1] ~= '1' or m[2] ~= ARGV[1] or m[3] ~= server_id() then return -1 end
redis.call('HSET', KEYS[1], 'restore_beat_ms', now_ms())
local n = tonumber(ARGV[2])
for i = 3, 2 + 2 * n, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1] .. ':w') end
if n > 0 then redis.call('INCRBY', KEYS[4], n) end
for i = 3 + 2 * n, #ARGV do redis.call('RPUSH', KEYS[3], ARGV[i]) end
return 1

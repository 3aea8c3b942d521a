-- Writes back one chunk of a shard's rows and free slots. KEYS: config, users, free,
-- persisted, held. ARGV: token, chunk number (1, 2, ... per shard and restore: a chunk sent
-- again by a client that resent it is not written twice), n, then n pairs user, slot (rows),
-- then free slots.
-- Answers DONE (written) or TAKEN_OVER (the restore was taken over or the server changed:
-- nothing written).
local m = read_config(KEYS[1], {'recovering', 'restoring', 'restore_server', 'restore_chunk'})
if m.recovering ~= '1' or m.restoring ~= ARGV[1] or m.restore_server ~= server_id() then return ANSWER.TAKEN_OVER end
if tonumber(ARGV[2]) <= (tonumber(m.restore_chunk) or 0) then return ANSWER.DONE end
redis.call('HSET', KEYS[1], 'restore_chunk', ARGV[2])
table.remove(ARGV, 2)
redis.call('HSET', KEYS[1], 'restore_beat_ms', now_ms())
local n = tonumber(ARGV[2])
-- One HSET and one RPUSH per chunk (the caller keeps chunks well under Lua's stack limit
-- for `unpack`): a call per element would cost most of the time.
if n > 0 then
  local pairs = {}
  for i = 3, 2 + 2 * n, 2 do
    pairs[#pairs + 1] = ARGV[i]
    pairs[#pairs + 1] = ARGV[i + 1] .. ':w'
  end
  redis.call('HSET', KEYS[2], unpack(pairs))
  redis.call('INCRBY', KEYS[4], n)
  redis.call('INCRBY', KEYS[5], n)
end
if #ARGV > 2 + 2 * n then
  redis.call('RPUSH', KEYS[3], unpack(ARGV, 3 + 2 * n))
end
return ANSWER.DONE

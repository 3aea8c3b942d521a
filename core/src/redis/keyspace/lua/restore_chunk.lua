-- Writes back one chunk of a shard's rows and free slots. KEYS: config, users, free,
-- persisted, held. ARGV: token, chunk number (1, 2, ... per shard and restore: a chunk sent
-- again by a client that resent it is not written twice), n, then n triples user, slot,
-- ordinal (rows), then free slots. A user's rows may span chunks (an event of more than one
-- coupon per user): each row is added to the user's entries.
-- Answers DONE (written) or TAKEN_OVER (the restore was taken over or the server changed:
-- nothing written).
local K = named(KEYS, {'config', 'users', 'free', 'persisted', 'held'})
local A = named(ARGV, {'token', 'chunk', 'n'})
local m = read_config(K.config, {'recovering', 'restoring', 'restore_server', 'restore_chunk'})
if m.recovering ~= '1' or m.restoring ~= A.token or m.restore_server ~= server_id() then return ANSWER.TAKEN_OVER end
if tonumber(A.chunk) <= (tonumber(m.restore_chunk) or 0) then return ANSWER.DONE end
redis.call('HSET', K.config, 'restore_chunk', A.chunk, 'restore_beat_ms', now_ms())
local n = tonumber(A.n)
-- The rows follow the named arguments (from ARGV index 4), then the free slots.
local rows = 4
-- One HSET and one RPUSH per chunk (the caller keeps chunks well under Lua's stack limit
-- for `unpack`): a call per element would cost most of the time.
if n > 0 then
  local users, order = {}, {}
  for i = rows, rows - 1 + 3 * n, 3 do
    if not users[ARGV[i]] then
      users[ARGV[i]] = {}
      order[#order + 1] = ARGV[i]
    end
  end
  -- What earlier chunks wrote of these users, in one read.
  local held = redis.call('HMGET', K.users, unpack(order))
  for j, user in ipairs(order) do users[user] = parse_entries(held[j]) end
  for i = rows, rows - 1 + 3 * n, 3 do
    local list = users[ARGV[i]]
    list[#list + 1] = {ARGV[i + 1], 'w', ARGV[i + 2]}
  end
  local fields = {}
  for _, user in ipairs(order) do
    fields[#fields + 1] = user
    fields[#fields + 1] = format_entries(users[user])
  end
  redis.call('HSET', K.users, unpack(fields))
  redis.call('INCRBY', K.persisted, n)
  redis.call('INCRBY', K.held, n)
end
if #ARGV >= rows + 3 * n then
  redis.call('RPUSH', K.free, unpack(ARGV, rows + 3 * n))
end
return ANSWER.DONE

-- An apply that carries an `Idempotency-Key` (draft-ietf-httpapi-idempotency-key-header)
-- claims the key before it runs. Keys are kept per event and user, in one hash per user on
-- the user's home shard: field the key, value the entry as JSON
-- `{g = generation, f = fingerprint, t = claimed_ms, s = status, b = body}` (`s` 0 while the
-- first request is under way). The hash expires `grace_ms` after the event's window; it
-- holds at most `max` keys, the oldest answered going first (a claim still in flight only
-- when every key is). The generation (the event's incarnation and the epoch the shard was
-- created with, `born`, which a restore keeps) tells entries of an earlier event of the name
-- from this one's: those are not answered again.
-- KEYS: config (of the user's home shard), idempotency_keys (the user's hash).
-- ARGV: key, fingerprint (of the request body), in_flight_ms (how long a claim stays the
-- first request's: past it, an api that died mid-request left it, and the next request
-- takes the key over), grace_ms, max.
-- Answers {code, status, body, claimed_ms}:
--   DONE        claimed: run the apply, then `idempotency_finish` with `claimed_ms`;
--   REPLAY      answered before with `status` and `body`: answer them again;
--   KEY_REUSED  the key was used with another body;
--   IN_FLIGHT   the key's first request is still under way;
--   MISSING     no configuration: run the apply without the key (it answers why).
local K = named(KEYS, {'config', 'idempotency_keys'})
local A = named(ARGV, {'key', 'fingerprint', 'in_flight_ms', 'grace_ms', 'max'})
local cfg = read_config(K.config, {'end_ms', 'incarnation', 'born', 'epoch'})
if not cfg.end_ms then return {ANSWER.MISSING, 0, '', 0} end
local generation = (cfg.incarnation or '') .. '/' .. (cfg.born or cfg.epoch or '')
local now = now_ms()
local kept = redis.call('HGET', K.idempotency_keys, A.key)
if kept then
  local entry = cjson.decode(kept)
  if entry.g == generation then
    if entry.f ~= A.fingerprint then return {ANSWER.KEY_REUSED, 0, '', 0} end
    if entry.s ~= 0 then return {ANSWER.REPLAY, entry.s, entry.b, 0} end
    if now < entry.t + tonumber(A.in_flight_ms) then return {ANSWER.IN_FLIGHT, 0, '', 0} end
  end
elseif redis.call('HLEN', K.idempotency_keys) >= tonumber(A.max) then
  -- The oldest answered key goes (any of an earlier generation first, a claim in flight
  -- last): at most `max` entries are read, whatever the event's size.
  local oldest, oldest_at
  local all = redis.call('HGETALL', K.idempotency_keys)
  for i = 1, #all, 2 do
    local entry = cjson.decode(all[i + 1])
    local at = entry.t
    if entry.s == 0 then at = at + 1e13 end
    if entry.g ~= generation then at = -1 end
    if not oldest_at or at < oldest_at then oldest, oldest_at = all[i], at end
  end
  redis.call('HDEL', K.idempotency_keys, oldest)
end
redis.call('HSET', K.idempotency_keys, A.key, cjson.encode({g = generation, f = A.fingerprint, t = now, s = 0, b = ''}))
redis.call('PEXPIREAT', K.idempotency_keys, tonumber(cfg.end_ms) + tonumber(A.grace_ms))
return {ANSWER.DONE, 0, '', now}

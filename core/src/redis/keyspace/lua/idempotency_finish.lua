-- The end of an apply that claimed an `Idempotency-Key` (`idempotency_claim.lua`): its
-- answer (never a 5xx: the caller leaves those in flight) is kept for the key's next
-- request. Only the claim this request made: one taken over after it ran too long, or
-- replaced, is left alone.
-- KEYS: idempotency_keys (the user's hash). ARGV: key, fingerprint, claimed_ms, status, body.
-- Answers DONE, or NOTHING if the claim is no longer this request's.
local K = named(KEYS, {'idempotency_keys'})
local A = named(ARGV, {'key', 'fingerprint', 'claimed_ms', 'status', 'body'})
local kept = redis.call('HGET', K.idempotency_keys, A.key)
if not kept then return ANSWER.NOTHING end
local entry = cjson.decode(kept)
if entry.f ~= A.fingerprint or entry.t ~= tonumber(A.claimed_ms) or entry.s ~= 0 then return ANSWER.NOTHING end
entry.s = tonumber(A.status)
entry.b = A.body
redis.call('HSET', K.idempotency_keys, A.key, cjson.encode(entry))
return ANSWER.DONE

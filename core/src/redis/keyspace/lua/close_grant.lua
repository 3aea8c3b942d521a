-- Decides a grant on its target shard for good, once its deadline passed: taken (it is in
-- `accepted`), or refused from now on (added to `refused`, so a late gate call carrying it
-- takes nothing). KEYS: accepted, refused, config. ARGV: grant id.
-- Answers 1 taken, 0 refused, -1 undecided: the target is recovering or lost its state (a
-- failover may have lost `accepted`; the restore voids every grant anyway).
local cfg = redis.call('HMGET', KEYS[3], 'limit', 'server', 'recovering', 'recovering_server')
if not cfg[1] then return -1 end
if fenced(KEYS[3], cfg[2], cfg[3], cfg[4]) then return -1 end
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
redis.call('SADD', KEYS[2], ARGV[1])
return 0

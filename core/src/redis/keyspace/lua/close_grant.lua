-- Decides a grant on its target shard for good, once its deadline passed: taken (it is in
-- `accepted`), or refused from now on (added to `refused`, so a late gate call carrying it
-- takes nothing). KEYS: accepted, refused. ARGV: grant id. Answers 1 taken, 0 refused.
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
redis.call('SADD', KEYS[2], ARGV[1])
return 0

-- Decides a grant on its target shard for good, once its deadline passed: taken (it is in
-- `accepted`), or refused from now on (added to `refused`, so a late gate call carrying it
-- takes nothing). KEYS: accepted, refused, config. ARGV: grant id.
-- Answers TAKEN, REFUSED, or undecided: RECOVERING or MISSING, the target is recovering or
-- lost its state (a failover may have lost `accepted`; the restore voids every grant anyway).
local cfg = read_config(KEYS[3], {'limit', 'server', 'recovering', 'recovering_server'})
if not cfg.limit then return ANSWER.MISSING end
if fenced(KEYS[3], cfg.server, cfg.recovering, cfg.recovering_server) then return ANSWER.RECOVERING end
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return ANSWER.TAKEN end
redis.call('SADD', KEYS[2], ARGV[1])
return ANSWER.REFUSED

-- Decides a grant on its target shard for good, once its deadline passed: taken (it is in
-- `accepted`), or refused from now on (added to `refused`, so a late gate call carrying it
-- takes nothing). KEYS: accepted, refused, config. ARGV: grant id.
-- Answers TAKEN, REFUSED, or undecided: RECOVERING or MISSING, the target is recovering or
-- lost its state (a failover may have lost `accepted`; the restore voids every grant anyway).
local K = named(KEYS, {'accepted', 'refused', 'config'})
local A = named(ARGV, {'grant'})
local cfg = read_config(K.config, {'limit', 'server', 'recovering', 'recovering_server'})
if not cfg.limit then return ANSWER.MISSING end
if fenced(K.config, cfg.server, cfg.recovering, cfg.recovering_server) then return ANSWER.RECOVERING end
if redis.call('SISMEMBER', K.accepted, A.grant) == 1 then return ANSWER.TAKEN end
redis.call('SADD', K.refused, A.grant)
return ANSWER.REFUSED

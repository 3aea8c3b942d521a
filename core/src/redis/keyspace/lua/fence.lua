-- The gate's fencing check, for events nobody applies to: marks the shard recovering when
-- its state was last verified on another server (as `apply.lua` does), or, with `force` = '1',
-- in any case (another shard of the event is recovering: they are restored together).
-- KEYS: config.
-- Answers RECOVERING if the shard is (now) recovering, VERIFIED if not, MISSING if it has no
-- configuration.
local K = named(KEYS, {'config'})
local A = named(ARGV, {'force'})
local cfg = read_config(K.config, {'limit', 'recovering', 'server', 'recovering_server'})
if not cfg.limit then return ANSWER.MISSING end
if fenced(K.config, cfg.server, cfg.recovering, cfg.recovering_server) then return ANSWER.RECOVERING end
if A.force == '1' then
  mark_recovering(K.config)
  return ANSWER.RECOVERING
end
return ANSWER.VERIFIED

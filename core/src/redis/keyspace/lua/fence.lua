-- The gate's fencing check, for events nobody applies to: marks the event recovering when
-- its state was last verified on another server. KEYS: config.
-- Answers 1 if the event is (now) recovering, 0 if not, -1 if it has no configuration.
local cfg = redis.call('HMGET', KEYS[1], 'limit', 'recovering', 'server')
if not cfg[1] then return -1 end
if cfg[2] == '1' then return 1 end
if cfg[3] ~= server_id() then
  redis.call('HSET', KEYS[1], 'recovering', '1', 'recovering_since_ms', now_ms())
  return 1
end
return 0

-- The gate's fencing check, for events nobody applies to: marks the shard recovering when
-- its state was last verified on another server (as `apply.lua` does), or, with ARGV[1] = '1',
-- in any case (another shard of the event is recovering: they are restored together).
-- KEYS: config.
-- Answers 1 if the event is (now) recovering, 0 if not, -1 if it has no configuration.
local cfg = redis.call('HMGET', KEYS[1], 'limit', 'recovering', 'server', 'recovering_server')
if not cfg[1] then return -1 end
local server = server_id()
if cfg[3] ~= server then
  if cfg[2] ~= '1' or cfg[4] ~= server then
    redis.call('HSET', KEYS[1], 'recovering', '1', 'recovering_since_ms', now_ms(), 'recovering_server', server)
  end
  return 1
end
if cfg[2] == '1' then return 1 end
if ARGV[1] == '1' then
  redis.call('HSET', KEYS[1], 'recovering', '1', 'recovering_since_ms', now_ms(), 'recovering_server', server)
  return 1
end
return 0

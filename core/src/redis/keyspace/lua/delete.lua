-- Deletes an event's shard. KEYS: config, then every other key of the shard. ARGV: tombstone_ttl_s
-- (0: no tombstone, for shards other than the home one).
-- Leaves a tombstone (`deleted` = 1) in place of the configuration for a while, so api
-- replicas that served the event answer 404 instead of taking it for a Redis that lost its
-- data (503). Answers how many keys existed.
local existed = redis.call('UNLINK', unpack(KEYS))
if tonumber(ARGV[1]) > 0 then
  redis.call('HSET', KEYS[1], 'deleted', '1')
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return existed

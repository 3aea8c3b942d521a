-- Deletes an event's shard. KEYS: config, then every other key of the shard. ARGV: tombstone_ttl_s
-- (0: no tombstone, for shards other than the home one).
-- Leaves a tombstone (`deleted` = 1) in place of the configuration for a while, so api
-- replicas that served the event answer 404 instead of taking it for a Redis that lost its
-- data (503). Answers how many keys existed.
local K = named(KEYS, {
  'config', 'count', 'users', 'free', 'unwritten', 'persisted', 'healed', 'held', 'grants',
  'grant_deadlines', 'accepted', 'refused', 'holder_changes',
})
local A = named(ARGV, {'tombstone_ttl_s'})
local existed = redis.call('UNLINK', unpack(KEYS))
if tonumber(A.tombstone_ttl_s) > 0 then
  redis.call('HSET', K.config, 'deleted', '1')
  redis.call('EXPIRE', K.config, A.tombstone_ttl_s)
end
return existed

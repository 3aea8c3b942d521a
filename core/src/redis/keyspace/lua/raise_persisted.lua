-- Raises `persisted` to ARGV[1], never lowers it, so consumers reporting counts taken at
-- different moments cannot move it backwards. KEYS: persisted.
local current = tonumber(redis.call('GET', KEYS[1])) or 0
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1]) end
return 0

-- The users of a shard whose entries changed since `since` (a `holders_version` of this
-- shard), with their entries now, read together so that they are exactly as of the version
-- answered. Reads only (sent with EVAL_RO). For the api's sold-out short cut, which keeps a
-- sold-out event's holders and on a new version reads only what changed (`holders_changed` in
-- `common.lua` keeps the log).
-- KEYS: config, users, holder_changes, held. ARGV: since, max (more changes than that: read all).
-- Answers {version, 1, user, entries, user, entries, ...} (entries '' for a user who holds
-- nothing now), or {version, 0} when the log cannot say (it does not reach back to `since`,
-- a change was made without logging, or more than `max` users changed): read every entry.
local K = named(KEYS, {'config', 'users', 'holder_changes', 'held'})
local A = named(ARGV, {'since', 'max'})
local covered = read_config(K.config, {'holders_version', 'holders_base', 'holders_logged', 'holders_held'})
local version = tonumber(covered.holders_version) or 0
local since = tonumber(A.since)
-- Whether the log holds every change up to now: none made without logging, whether it
-- moved the version (`holders_logged`) or not (`held` then differs from `holders_held`:
-- a slot handed out or given back by a script that does not log).
local held = tonumber(redis.call('GET', K.held)) or 0
if tonumber(covered.holders_logged) ~= version or tonumber(covered.holders_held) ~= held then return {version, 0} end
if version == since then return {version, 1} end
if since < (tonumber(covered.holders_base) or math.huge) or since > version then return {version, 0} end
local max = tonumber(A.max)
local changed = redis.call('ZRANGEBYSCORE', K.holder_changes, '(' .. A.since, '+inf', 'LIMIT', 0, max + 1)
if #changed > max then return {version, 0} end
local answer = {version, 1}
for _, user in ipairs(changed) do
  answer[#answer + 1] = user
  answer[#answer + 1] = redis.call('HGET', K.users, user) or ''
end
return answer

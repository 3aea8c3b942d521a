-- Whether users hold slots, for the consumer's check of the records it writes.
-- Reads only (sent with EVAL_RO, so a master that pauses writes still answers).
-- KEYS: config, users (of the users' home shard). ARGV: incarnation ('' for none), shard,
-- shards (the layout the caller knows), then user, slot, user, slot, ...
-- Answers RECOVERING when this shard cannot tell (no configuration, recovering, or its state
-- was last verified on another server: a restart or a failover, which the gate will fence),
-- OTHER_INCARNATION when the records are of another object of the event's name (judged
-- apart), OTHER_LAYOUT when the event's layout is not the caller's (it reads it again), else
-- one 1 or 0 per pair: whether the user holds that slot.
local K = named(KEYS, {'config', 'users'})
local A = named(ARGV, {'incarnation', 'shard', 'shards'})
local cfg = read_config(K.config, {'limit', 'recovering', 'server', 'incarnation', 'shard', 'shards'})
if not cfg.limit or cfg.recovering == '1' or cfg.server ~= server_id() then return ANSWER.RECOVERING end
if (cfg.incarnation or '') ~= A.incarnation then return ANSWER.OTHER_INCARNATION end
if (tonumber(cfg.shards) or 1) ~= tonumber(A.shards) or (tonumber(cfg.shard) or 0) ~= tonumber(A.shard) then
  return ANSWER.OTHER_LAYOUT
end
local answers = {}
for i = 4, #ARGV, 2 do
  local held = 0
  for _, e in ipairs(parse_entries(redis.call('HGET', K.users, ARGV[i]))) do
    if e[1] == ARGV[i + 1] then held = 1 break end
  end
  answers[#answers + 1] = held
end
return answers

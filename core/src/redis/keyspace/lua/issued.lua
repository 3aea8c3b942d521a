-- Whether users hold slots, for the consumer's check of records that would add slot rows.
-- Reads only (sent with EVAL_RO, so a master that pauses writes still answers).
-- KEYS: config, users (of the users' home shard). ARGV: user, slot, user, slot, ...
-- Answers RECOVERING when this shard cannot tell (no configuration, recovering, or its state
-- was last verified on another server: a restart or a failover, which the gate will fence),
-- else one 1 or 0 per pair: whether the user holds that slot.
local K = named(KEYS, {'config', 'users'})
local cfg = read_config(K.config, {'limit', 'recovering', 'server'})
if not cfg.limit or cfg.recovering == '1' or cfg.server ~= server_id() then return ANSWER.RECOVERING end
local answers = {}
for i = 1, #ARGV, 2 do
  local held = 0
  for _, e in ipairs(parse_entries(redis.call('HGET', K.users, ARGV[i]))) do
    if e[1] == ARGV[i + 1] then held = 1 break end
  end
  answers[#answers + 1] = held
end
return answers

-- Helpers prepended to every script of the keyspace (see `keyspace::script`).

-- Every script's answer codes, by name: one table for all of them, mirrored by
-- `codes::Answer` in Rust (a test reads this table and compares). A code means the same in
-- every script that gives it; each script's header says which it gives.
local ANSWER = {
  NOTHING = 0, -- nothing there, or nothing to do
  DONE = 1, -- done: released, settled, granted, begun, written, finished, removed
  ISSUED = 2, -- the gate issued a new slot to the user: deliver its record
  DELIVER_AGAIN = 3, -- the user's earlier delivery never completed: deliver the same record again
  CONFIRMED = 4, -- the user's coupon is written but was never confirmed to them: confirm it
  CREATED = 5, -- a configuration written where there was none
  UPDATED = 6,
  UNCHANGED = 7,
  CREATED_RECOVERING = 8, -- a lost configuration written back, marked recovering
  VERIFIED = 9, -- the shard's state is verified on this server
  TAKEN = 10, -- a grant its target took
  REFUSED = 11, -- a grant its target refused for good
  REPLAY = 12, -- an Idempotency-Key's request answered already: its answer again
  DELETED = -1, -- the event was deleted (its tombstone is there)
  NOT_OPEN = -2,
  CLOSED = -3,
  HELD = -4, -- the user holds a slot already (or it is being delivered)
  SOLD_OUT = -5,
  RECOVERING = -6, -- being verified against SQL: nothing is decided
  MISSING = -7, -- no configuration at all (never provisioned, or Redis lost it)
  PAUSED = -8,
  SHARD_EMPTY = -9, -- this shard has no stock left; others may
  OTHER_LAYOUT = -10, -- the event's layout is not the caller's
  TOO_EARLY = -11, -- a restore before the records issued before the loss can have arrived
  BUSY = -12, -- another restore is under way
  TAKEN_OVER = -13, -- the restore was taken over, or the server changed under it
  LIMIT_BELOW_ROWS = -14, -- the limit is below the highest slot with a row
  OTHER_INCARNATION = -15, -- the state belongs to another object of the event's name
  STILL_OPEN = -16,
  UNWRITTEN = -17, -- coupons not yet written
  SHARDS_CHANGED = -18, -- the event exists with another number of shards
  BELOW_ISSUED = -19, -- a new limit below a slot already handed out
  KEY_REUSED = -20, -- an Idempotency-Key used before with another request body
  IN_FLIGHT = -21, -- an Idempotency-Key whose first request is still under way
}

-- A script's KEYS or ARGV by name: `named(KEYS, {'config', 'count'})` gives `.config` and
-- `.count`, in the order its callers send them (`contract.rs` in Rust, which a test compares
-- with these declarations). A call with fewer values than named fails, changing nothing.
local function named(values, names)
  if #values < #names then
    error('expected ' .. table.concat(names, ', ') .. ' (' .. #names .. '), got ' .. #values .. ' values')
  end
  local by_name = {}
  for i, name in ipairs(names) do by_name[name] = values[i] end
  return by_name
end

-- Milliseconds of the Redis server's clock, so every process sees the same time.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The server's replication id: a new one on every restart, every promotion of a replica and
-- every full resynchronisation, which are exactly the moments a dataset can go back in time.
local function server_id()
  return string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)')
end

-- A user's entries, `slot:state[:ordinal]` separated by spaces, as a list of
-- {slot, state, ordinal}. States: p pending (issued, delivery not acknowledged), a
-- acknowledged by the broker (the user was answered 201), w written to SQL after that, x
-- written to SQL but never confirmed to the user (their apply answered 503; the next one
-- answers 201). The ordinal (which of the user's coupons of the event it is, 1 to the
-- event's `per_user`; the SQL row's, unique per user) is written only when it is not 1, so an
-- event of one coupon per user keeps the entries it always had.
local function parse_entries(held)
  local list = {}
  if held then
    for slot, state, ordinal in string.gmatch(held, '(%d+):(%a):?(%d*)') do
      if ordinal == '' then ordinal = '1' end
      list[#list + 1] = {slot, state, ordinal}
    end
  end
  return list
end

-- The value `parse_entries` reads.
local function format_entries(list)
  local parts = {}
  for i, e in ipairs(list) do
    parts[i] = e[1] .. ':' .. e[2]
    if e[3] and e[3] ~= '1' then parts[i] = parts[i] .. ':' .. e[3] end
  end
  return table.concat(parts, ' ')
end

local function store_entries(users, user, list)
  if #list == 0 then
    redis.call('HDEL', users, user)
  else
    redis.call('HSET', users, user, format_entries(list))
  end
end

-- The lowest ordinal none of `list` has.
local function free_ordinal(list)
  local used = {}
  for _, e in ipairs(list) do used[e[3]] = true end
  local ordinal = 1
  while used[tostring(ordinal)] do ordinal = ordinal + 1 end
  return tostring(ordinal)
end

-- The member of the `unwritten` sorted set for one entry.
local function unwritten_member(slot, user)
  return slot .. ':' .. user
end

-- The state of an entry whose row is written: `w` if the user was answered 201, else `x`.
local function written_state(state)
  if state == 'a' then return 'w' end
  return 'x'
end

-- The slot after `count` slots of a shard's stride: shard `shard` of `shards` hands out
-- shard + 1, shard + 1 + shards, ... (with one shard: count + 1).
local function stride_slot(count, shard, shards)
  return count * shards + shard + 1
end

-- Fields of a configuration hash, by name: `read_config(key, {'limit', 'topic'})` gives
-- `.limit` and `.topic` (false when the field is absent, as HMGET answers).
local function read_config(config, fields)
  local values = redis.call('HMGET', config, unpack(fields))
  local read = {}
  for i, field in ipairs(fields) do read[field] = values[i] end
  return read
end

-- Marks a shard recovering from now, on this server: nothing is decided from its state until
-- the consumer has verified it against SQL (restored it).
local function mark_recovering(config)
  redis.call('HSET', config, 'recovering', '1', 'recovering_since_ms', now_ms(), 'recovering_server', server_id())
end

-- The fencing check of a shard, the one every script that decides from a shard's state runs
-- (the gate, grants, `fence.lua`): if its state was last verified on another server, marks it
-- recovering (a mark carried over from an earlier server starts its settle time again).
-- `cfg_server`, `cfg_recovering`, `cfg_recovering_server`: the config's `server`, `recovering`
-- and `recovering_server`. Answers true if the shard is recovering.
local function fenced(config, cfg_server, cfg_recovering, cfg_recovering_server)
  local server = server_id()
  if cfg_server ~= server then
    if cfg_recovering ~= '1' or cfg_recovering_server ~= server then mark_recovering(config) end
    return true
  end
  return cfg_recovering == '1'
end

-- The holders' change log of a shard (`holder_changes`): the users whose entries changed
-- once the shard's counter was used up (a release, a heal, a slot given back handed out
-- again), scored by the `holders_version` their change made. An api that keeps a sold-out
-- event's holders in memory as of a version reads only the users changed since
-- (`holder_changes.lua`), not every holder again. Configuration fields say what the log
-- covers: `holders_base` (every change with a higher version is in it), `holders_logged` and
-- `holders_held` (the version of its last change and the shard's `held` then). A version past
-- `holders_logged`, or a `held` other than `holders_held`, was changed by a script that does
-- not log (an older binary during an upgrade, or a restore writing entries back), and the
-- log cannot say what changed. At most HOLDER_LOG_MAX users: the oldest go, and the base
-- moves past them.
local HOLDER_LOG_MAX = 10000

-- What the log records of the shard's state with each change.
local function holders_covered(config, held, version, base)
  redis.call('HSET', config, 'holders_base', base, 'holders_logged', version,
    'holders_held', tonumber(redis.call('GET', held)) or 0)
end

-- Counts a change of who may hold a slot (`holders_version`) and logs the users whose
-- entries it changed (none for a change of stock alone). Called once the change is made
-- (`held` included). Answers the new version.
local function holders_changed(config, log, held, users)
  local version = redis.call('HINCRBY', config, 'holders_version', 1)
  local covered = read_config(config, {'holders_base', 'holders_logged'})
  local base = tonumber(covered.holders_base) or 0
  -- The change before this one was not logged (an older binary, or a shard from before the
  -- log): the log is complete only from here on.
  if tonumber(covered.holders_logged) ~= version - 1 then base = version - 1 end
  for _, user in ipairs(users) do redis.call('ZADD', log, version, user) end
  local excess = redis.call('ZCARD', log) - HOLDER_LOG_MAX
  if excess > 0 then
    local dropped = redis.call('ZPOPMIN', log, excess)
    base = math.max(base, tonumber(dropped[#dropped]))
  end
  holders_covered(config, held, version, base)
  return version
end

-- Starts the log again at a change it cannot describe user by user (a new event, a restore,
-- a new limit, the counter's last slot handed out: slots from the counter are not logged):
-- an api holding the holders as of an earlier version reads them all again. The new version
-- is at least the server's time in microseconds: after Redis lost writes (a failover, a
-- restart from an old file) the restore's reset is past every version the lost history
-- made (which grew by one per change, far slower than the clock), so holders an api read
-- from that history are never taken for current; so is a new event of a deleted one's name.
local function holders_reset(config, log, held)
  local t = redis.call('TIME')
  local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local version = math.max((tonumber(redis.call('HGET', config, 'holders_version')) or 0) + 1, now_us)
  redis.call('HSET', config, 'holders_version', version)
  redis.call('UNLINK', log)
  holders_covered(config, held, version, version)
  return version
end

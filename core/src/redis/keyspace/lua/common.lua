-- Helpers prepended to every script of the keyspace (see `keyspace::script`).

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

-- A user's entries, `slot:state` separated by spaces, as a list of {slot, state}. States:
-- p pending (issued, delivery not acknowledged), a acknowledged by the broker (the user was
-- answered 201), w written to SQL after that, x written to SQL but never confirmed to the
-- user (their apply answered 503; the next one answers 201).
local function parse_entries(held)
  local list = {}
  if held then
    for slot, state in string.gmatch(held, '(%d+):(%a)') do list[#list + 1] = {slot, state} end
  end
  return list
end

local function store_entries(users, user, list)
  if #list == 0 then
    redis.call('HDEL', users, user)
  else
    local parts = {}
    for i, e in ipairs(list) do parts[i] = e[1] .. ':' .. e[2] end
    redis.call('HSET', users, user, table.concat(parts, ' '))
  end
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

-- The fencing check of a shard: if its state was last verified on another server, marks it
-- recovering (a mark carried over from an earlier server starts its settle time again).
-- `cfg_server`, `cfg_recovering`, `cfg_recovering_server`: the config's `server`, `recovering`
-- and `recovering_server`. Answers true if the shard is recovering.
local function fenced(config, cfg_server, cfg_recovering, cfg_recovering_server)
  local server = server_id()
  if cfg_server ~= server then
    if cfg_recovering ~= '1' or cfg_recovering_server ~= server then
      redis.call('HSET', config, 'recovering', '1', 'recovering_since_ms', now_ms(), 'recovering_server', server)
    end
    return true
  end
  return cfg_recovering == '1'
end

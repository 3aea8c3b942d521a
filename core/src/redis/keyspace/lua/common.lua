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

-- A user's entries, `slot:state` separated by spaces (state p pending, a acknowledged by the
-- broker, w written to SQL), as a list of {slot, state}.
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

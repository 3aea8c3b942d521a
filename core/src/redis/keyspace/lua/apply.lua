-- The apply gate: decides the applies of one or more users atomically, on their home shard,
-- one after the other as separate calls would (a user named twice gets their slot once).
-- KEYS: config, count, users, free, unwritten, held, accepted, refused, holder_changes, call
-- (this call's answers, kept for a resend). ARGV: lease_ms (how
-- long a delivery may take: the api's produce timeout and a margin), shard, shards (the
-- layout the caller routed by), n, then n user ids, then optionally a grant id, its epoch and
-- its slots (stock another shard gave this one: taken into the free list first, once, unless
-- the grant was refused or is of another epoch: made before a restore, or for an earlier
-- event of the name).
-- Answers one {code, slot, topic, deadline, incarnation, grant, ordinal} per user, in order
-- (ordinal: which of the user's coupons `slot` is, for ISSUED, DELIVER_AGAIN and CONFIRMED;
-- deadline:
-- of the delivery now under way, which a release must name; topic and incarnation, which the
-- record carries, for ISSUED and DELIVER_AGAIN only; grant: 1 if the grant's slots are in this
-- shard's stock). Codes (`ANSWER`):
--   ISSUED         a new slot was issued to the user: deliver its record;
--   DELIVER_AGAIN  the user's earlier delivery of `slot` never completed (its lease ran out):
--                  deliver the same record again (the consumer skips the duplicate);
--   CONFIRMED      the user's earlier delivery of `slot` was never confirmed to them, but its
--                  row is written: confirm it now, nothing to deliver;
--   DELETED, MISSING (no configuration at all: never provisioned, or Redis lost it);
--   NOT_OPEN, CLOSED, HELD (the user holds `per_user` slots already, or is being delivered
--                  the last of them: `slot`; topic lists all the user's slots);
--   SOLD_OUT       slot: the window's end, so the api can answer 403 from memory once it
--                  passed; deadline: `holders_version`, which changes whenever a holder can
--                  have changed;
--   RECOVERING (being verified against SQL), PAUSED;
--   SHARD_EMPTY    this shard has no stock left but the event is sharded: other shards may
--                  (slot and deadline as for SOLD_OUT, of this shard);
--   OTHER_LAYOUT   the event's layout is not the caller's.
-- A shard hands out the slots of its stride (`shard + 1`, `shard + 1 + shards`, ...) from its
-- counter, and slots given back or granted from its free list: slot numbers are unique across
-- shards without any cross-shard call. The counter never passes the limit: the next slot is
-- checked before INCR. With one shard this is `count < limit`, as it always was.
-- What holds for the whole shard (configuration, layout, fencing, pause, a grant) is read
-- once per call: a batch of users pays it once.
local K = named(KEYS, {
  'config', 'count', 'users', 'free', 'unwritten', 'held', 'accepted', 'refused', 'holder_changes', 'call',
})
local A = named(ARGV, {'lease_ms', 'shard', 'shards', 'n'})
local n = tonumber(A.n) or 0
-- A resent call (the cluster client sends a command again after a lost connection, and its
-- first run may have happened) answers what the first run answered: its users were issued
-- their slots then, and must be told so, not that they hold them already.
local done = redis.call('GET', K.call)
if done then return cjson.decode(done) end
-- The same answer for every user of the call.
local function all(code, slot, deadline, granted)
  local answers = {}
  for i = 1, n do answers[i] = {code, slot or 0, '', deadline or 0, '', granted or 0, 0} end
  return answers
end
local cfg = read_config(K.config, {
  'limit', 'per_user', 'start_ms', 'end_ms', 'recovering', 'topic', 'server', 'deleted', 'recovering_server',
  'lease_ms', 'holders_version', 'paused', 'incarnation', 'shards', 'shard', 'epoch',
})
local limit = tonumber(cfg.limit)
if not limit then
  if cfg.deleted == '1' then return all(ANSWER.DELETED) end
  return all(ANSWER.MISSING)
end
local shard, shards = tonumber(A.shard) or 0, tonumber(A.shards) or 1
if (tonumber(cfg.shards) or 1) ~= shards or (tonumber(cfg.shard) or 0) ~= shard then return all(ANSWER.OTHER_LAYOUT) end
local lease = tonumber(A.lease_ms)
-- The longest lease any api uses: a restore waits at least this long after its mark. Raised
-- before any answer, recovering included: a configuration written back after Redis lost it
-- starts without it, and an api still holding a produce from before must keep the restore
-- waiting.
if (tonumber(cfg.lease_ms) or 0) < lease then redis.call('HSET', K.config, 'lease_ms', lease) end
local now = now_ms()
-- Fencing (`fenced`): the state was last verified on another server (a restart, a failover,
-- a restored snapshot). It may have lost acknowledged writes, so nothing is decided until the
-- consumer has verified it against SQL and the topic.
if fenced(K.config, cfg.server, cfg.recovering, cfg.recovering_server) then return all(ANSWER.RECOVERING) end
-- A grant is taken only by a verified, open shard (a restore rebuilds every shard's stock
-- from SQL, so slots granted before it must not come back) and only once.
local granted = 0
local grant = 5 + n
if ARGV[grant] and (tonumber(cfg.epoch) or 0) == tonumber(ARGV[grant + 1]) then
  if redis.call('SISMEMBER', K.refused, ARGV[grant]) == 0 then
    if redis.call('SADD', K.accepted, ARGV[grant]) == 1 and #ARGV > grant + 1 then
      redis.call('RPUSH', K.free, unpack(ARGV, grant + 2))
    end
    granted = 1
  end
end
if cfg.paused == '1' then return all(ANSWER.PAUSED, 0, 0, granted) end
local per_user = tonumber(cfg.per_user) or 1
-- What SOLD_OUT and SHARD_EMPTY report: a slot given back and issued earlier in this call
-- changes it.
local holders_version = tonumber(cfg.holders_version) or 0

-- The call's writes, kept here and made once per call (`flush`) instead of once per user:
-- a batch's users cost the master one HGET each and a few commands for the lot. Everything
-- this script reads back (a user named twice, a pending entry's lease) is read through
-- these tables first, so the call decides exactly as writing at once would; the script is
-- atomic, so no other client sees the difference.
local entries_of, stored_entries, leases = {}, {}, {}
local issued_count, issued_held, pending = 0, 0, 0
local count -- the shard's counter, read once when first needed
local free_empty = false -- LPOP answered nothing: the free list stays empty for this call

local function flush()
  local fields = {}
  for user, list in pairs(stored_entries) do
    fields[#fields + 1] = user
    fields[#fields + 1] = format_entries(list)
  end
  if #fields > 0 then redis.call('HSET', K.users, unpack(fields)) end
  local deadlines = {}
  for member, deadline in pairs(leases) do
    deadlines[#deadlines + 1] = deadline
    deadlines[#deadlines + 1] = member
  end
  if #deadlines > 0 then redis.call('ZADD', K.unwritten, unpack(deadlines)) end
  stored_entries, leases, pending = {}, {}, 0
  if issued_count > 0 then redis.call('INCRBY', K.count, issued_count) end
  if issued_held > 0 then redis.call('INCRBY', K.held, issued_held) end
  issued_count, issued_held = 0, 0
end

local function entries(user)
  local list = entries_of[user]
  if not list then
    list = parse_entries(redis.call('HGET', K.users, user))
    entries_of[user] = list
  end
  return list
end

-- Bounded by what one command may carry (Lua's unpack): a huge call flushes on the way.
local function count_pending()
  pending = pending + 1
  if pending >= 1000 then flush() end
end

local function store(user, list)
  stored_entries[user] = list
  count_pending()
end

local function lease_of(member)
  return leases[member] or tonumber(redis.call('ZSCORE', K.unwritten, member)) or 0
end

local function set_lease(member, deadline)
  leases[member] = deadline
  count_pending()
end

-- One user's decision.
local function decide(user)
  local list = entries(user)
  -- The user's own entries first: a coupon issued in the window stays theirs after it.
  for _, e in ipairs(list) do
    if e[2] == 'x' then
      e[2] = 'w'
      store(user, list)
      return {ANSWER.CONFIRMED, tonumber(e[1]), cfg.topic, 0, '', granted, tonumber(e[3])}
    end
  end
  local delivering
  for _, e in ipairs(list) do
    if e[2] == 'p' then
      local member = unwritten_member(e[1], user)
      if lease_of(member) <= now then
        set_lease(member, now + lease)
        return {ANSWER.DELIVER_AGAIN, tonumber(e[1]), cfg.topic, now + lease, cfg.incarnation or '', granted, tonumber(e[3])}
      end
      delivering = delivering or e
    end
  end
  -- As many as the event gives a user: HELD, with the slot being delivered if one is (its
  -- delivery may still fail), else the first; the topic field lists every slot the user
  -- holds. Below that, another request's delivery under way does not hold this one back.
  if #list >= per_user then
    local slots = {}
    for i, e in ipairs(list) do slots[i] = e[1] end
    return {ANSWER.HELD, tonumber((delivering or list[1])[1]), table.concat(slots, ' '), 0, '', granted, 0}
  end
  if now < tonumber(cfg.start_ms) then return {ANSWER.NOT_OPEN, 0, '', 0, '', granted, 0} end
  if now >= tonumber(cfg.end_ms) then return {ANSWER.CLOSED, 0, '', 0, '', granted, 0} end
  local slot
  for _ = 1, 16 do
    if free_empty then break end
    slot = tonumber(redis.call('LPOP', K.free))
    if not slot then free_empty = true break end
    if slot <= limit then break end
    slot = nil -- above a limit lowered since it was given back: dropped
  end
  -- How the holders' change log learns of this slot (`holders_changed`), once it is issued.
  local log
  if slot then
    -- A slot given back (or granted) after the event could sell out: an api keeping the
    -- holders learns of the new one from the change log.
    log = 'changed'
  else
    count = count or tonumber(redis.call('GET', K.count)) or 0
    local next_slot = stride_slot(count, shard, shards)
    if next_slot > limit then
      local code = ANSWER.SOLD_OUT
      if shards > 1 then code = ANSWER.SHARD_EMPTY end
      return {code, tonumber(cfg.end_ms), '', holders_version, '', granted, 0}
    end
    count = count + 1
    issued_count = issued_count + 1
    slot = next_slot
    -- Slots from the counter are not logged (the hot path of a sale); its last one starts
    -- the log again, so holders read before it are read whole once more, and from here on
    -- only a new limit (which starts the log again too) reopens the counter.
    if stride_slot(count, shard, shards) > limit then log = 'reset' end
  end
  local ordinal = free_ordinal(list)
  list[#list + 1] = {tostring(slot), 'p', ordinal}
  store(user, list)
  set_lease(unwritten_member(slot, user), now + lease)
  issued_held = issued_held + 1
  -- The log's functions read `held`: the call's writes go first.
  if log then flush() end
  if log == 'changed' then holders_version = holders_changed(K.config, K.holder_changes, K.held, {user}) end
  if log == 'reset' then holders_version = holders_reset(K.config, K.holder_changes, K.held) end
  return {ANSWER.ISSUED, slot, cfg.topic, now + lease, cfg.incarnation or '', granted, tonumber(ordinal)}
end

local answers = {}
for i = 1, n do answers[i] = decide(ARGV[4 + i]) end
flush()
-- Kept as long as a delivery's lease, when the call issued, redelivered or confirmed a slot
-- (any other answer, a resend finds the same): a resend comes within seconds. cjson keeps
-- 14 significant digits: slots and millisecond times are well within them, but a
-- `holders_version` (microseconds, 16 digits) is not, so the fourth field is kept as a
-- string of digits (the caller reads either form as a number).
local changed = {[ANSWER.ISSUED] = true, [ANSWER.DELIVER_AGAIN] = true, [ANSWER.CONFIRMED] = true}
for i = 1, n do
  if changed[answers[i][1]] then
    local kept = {}
    for j, a in ipairs(answers) do kept[j] = {a[1], a[2], a[3], string.format('%.0f', a[4]), a[5], a[6], a[7]} end
    redis.call('SET', K.call, cjson.encode(kept), 'PX', lease)
    break
  end
end
return answers

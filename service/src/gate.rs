//! The apply gate: one atomic Redis script decides whether a user gets a slot.
//!
//! Unlike the seed's `INCR`-then-compare, the counter never passes the limit: the script
//! checks `count < limit` before it increments, so `count` is always the highest slot ever
//! handed out and `count <= limit` holds in Redis itself.

use redis::aio::ConnectionManager;
use redis::Script;

use crate::event_id::EventId;

/// The gate's decision, as the script returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The user holds `slot`; its record goes to `topic`.
    Issued {
        slot: i64,
        topic: String,
    },
    Duplicate,
    SoldOut,
    NotOpen,
    Closed,
    UnknownEvent,
    /// Redis lost the event's state and the consumer is restoring it from SQL.
    Recovering,
}

impl Decision {
    fn from_answer((code, topic): (i64, String)) -> Result<Self, redis::RedisError> {
        Ok(match code {
            slot if slot > 0 => Self::Issued { slot, topic },
            -1 => Self::UnknownEvent,
            -2 => Self::NotOpen,
            -3 => Self::Closed,
            -4 => Self::Duplicate,
            -5 => Self::SoldOut,
            -6 => Self::Recovering,
            other => {
                return Err(redis::RedisError::from((redis::ErrorKind::TypeError, "unexpected gate script answer", other.to_string())))
            }
        })
    }
}

/// KEYS: config, count, users, free. ARGV: user id. Answers `{slot, topic}` or `{code, ''}`.
/// Time comes from the Redis server, so every api replica sees the same window.
pub const APPLY_LUA: &str = r#"
local cfg = redis.call('HMGET', KEYS[1], 'limit', 'per_user', 'start_ms', 'end_ms', 'recovering', 'topic')
local limit = tonumber(cfg[1])
if not limit then return {-1, ''} end
if cfg[5] == '1' then return {-6, ''} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now < tonumber(cfg[3]) then return {-2, ''} end
if now >= tonumber(cfg[4]) then return {-3, ''} end
local per_user = tonumber(cfg[2]) or 1
local user = ARGV[1]
if per_user <= 1 then
  if redis.call('SISMEMBER', KEYS[3], user) == 1 then return {-4, ''} end
else
  if (tonumber(redis.call('HGET', KEYS[3], user)) or 0) >= per_user then return {-4, ''} end
end
local slot = tonumber(redis.call('LPOP', KEYS[4]))
if not slot then
  local count = tonumber(redis.call('GET', KEYS[2])) or 0
  if count >= limit then return {-5, ''} end
  slot = redis.call('INCR', KEYS[2])
end
if per_user <= 1 then
  redis.call('SADD', KEYS[3], user)
else
  redis.call('HINCRBY', KEYS[3], user, 1)
end
return {slot, cfg[6]}
"#;

/// KEYS: config, users, free. ARGV: user id, slot.
/// Gives the slot back only if the user still holds a mark, so a repeated release cannot
/// put the same slot on the free list twice.
const RELEASE_LUA: &str = r#"
local per_user = tonumber(redis.call('HGET', KEYS[1], 'per_user')) or 1
local removed
if per_user <= 1 then
  removed = redis.call('SREM', KEYS[2], ARGV[1])
else
  local n = tonumber(redis.call('HGET', KEYS[2], ARGV[1])) or 0
  if n > 0 then
    if n == 1 then redis.call('HDEL', KEYS[2], ARGV[1]) else redis.call('HINCRBY', KEYS[2], ARGV[1], -1) end
    removed = 1
  else
    removed = 0
  end
end
if removed == 1 then redis.call('LPUSH', KEYS[3], ARGV[2]) end
return removed
"#;

/// SHA1 of the apply script, as EVALSHA wants it (for benchmarks driving the script directly).
pub fn apply_script_sha() -> String {
    Script::new(APPLY_LUA).get_hash().to_owned()
}

/// Holds the loaded scripts; `Script::invoke_async` sends EVALSHA and loads the script
/// again when Redis answers NOSCRIPT (after a restart or `SCRIPT FLUSH`).
pub struct Gate {
    apply: Script,
    release: Script,
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    pub fn new() -> Self {
        Self { apply: Script::new(APPLY_LUA), release: Script::new(RELEASE_LUA) }
    }

    /// One Redis round trip per apply.
    pub async fn apply(&self, conn: &mut ConnectionManager, event: &EventId, user_id: &str) -> redis::RedisResult<Decision> {
        let keys = event.keys();
        let answer: (i64, String) =
            self.apply.key(&keys.config).key(&keys.count).key(&keys.users).key(&keys.free).arg(user_id).invoke_async(conn).await?;
        Decision::from_answer(answer)
    }

    /// Undoes an issued slot whose record never reached the broker. Returns whether a mark
    /// was removed.
    pub async fn release(&self, conn: &mut ConnectionManager, event: &EventId, user_id: &str, slot: i64) -> redis::RedisResult<bool> {
        let keys = event.keys();
        let removed: i64 =
            self.release.key(&keys.config).key(&keys.users).key(&keys.free).arg(user_id).arg(slot).invoke_async(conn).await?;
        Ok(removed == 1)
    }
}

/// Counters shown by `GET /v1/events/{event}` and the operator's status.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct EventCounters {
    pub limit: i64,
    pub per_user: i64,
    pub start_ms: i64,
    pub end_ms: i64,
    pub topic: String,
    /// Slots currently held by users: `count - len(free)`.
    pub issued: i64,
    pub persisted: i64,
    pub recovering: bool,
}

/// Reads an event's configuration and counters in one pipeline; `None` if not provisioned.
pub async fn read_counters(conn: &mut ConnectionManager, event: &EventId) -> redis::RedisResult<Option<EventCounters>> {
    let keys = event.keys();
    #[allow(clippy::type_complexity)]
    let ((limit, per_user, start_ms, end_ms, topic, recovering), count, free, persisted): (
        (Option<i64>, Option<i64>, Option<i64>, Option<i64>, Option<String>, Option<String>),
        Option<i64>,
        i64,
        Option<i64>,
    ) = redis::pipe()
        .hget(&keys.config, &["limit", "per_user", "start_ms", "end_ms", "topic", "recovering"])
        .get(&keys.count)
        .llen(&keys.free)
        .get(&keys.persisted)
        .query_async(conn)
        .await?;
    let Some(limit) = limit else { return Ok(None) };
    Ok(Some(EventCounters {
        limit,
        per_user: per_user.unwrap_or(1),
        start_ms: start_ms.unwrap_or(0),
        end_ms: end_ms.unwrap_or(0),
        topic: topic.unwrap_or_default(),
        issued: count.unwrap_or(0) - free,
        persisted: persisted.unwrap_or(0),
        recovering: recovering.as_deref() == Some("1"),
    }))
}

/// Raises `persisted` to `rows` (never lowers it), so concurrent consumers reporting counts
/// taken at different moments cannot move it backwards.
pub async fn record_persisted(conn: &mut ConnectionManager, event: &EventId, rows: i64) -> redis::RedisResult<()> {
    static RAISE: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::new(RAISE_LUA));
    let _: i64 = RAISE.key(event.keys().persisted).arg(rows).invoke_async(conn).await?;
    Ok(())
}

const RAISE_LUA: &str = "local c = tonumber(redis.call('GET', KEYS[1])) or 0 \
        if tonumber(ARGV[1]) > c then redis.call('SET', KEYS[1], ARGV[1]) end return 0";

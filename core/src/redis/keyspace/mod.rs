//! The Redis keyspace: the one place that names keys and hash fields, holds the Lua scripts
//! (`lua/*.lua`) and sends commands. Every read and write of the system goes through a
//! typed function here.
//!
//! # Layout (the reference)
//!
//! One event is one Redis hash tag, `{<namespace>/<name>}`, so all of its keys live in the
//! same Redis Cluster slot and one script can touch them atomically:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `coupon:{ns/name}:config` | hash | `limit`, `per_user`, `start_ms`, `end_ms` (window, server time in ms), `topic`; while Redis state is being restored from SQL also `recovering` = `1` and `recovering_since_ms` |
//! | `coupon:{ns/name}:count` | integer | the highest slot ever handed out (never above `limit`) |
//! | `coupon:{ns/name}:users` | set | users holding a coupon (a hash user → count when `per_user` > 1) |
//! | `coupon:{ns/name}:free` | list | slots given back after a produce that certainly failed; handed out first |
//! | `coupon:{ns/name}:persisted` | integer | rows the consumer has written (raised, never lowered) |
//! | `coupon:recovering` | set | events (`ns/name`) whose state the consumer must restore from SQL; outside any event's hash tag |
//!
//! Issued coupons are `count - len(free)`.

mod config;
mod gate;
mod recovery;

use std::sync::LazyLock;

use redis::aio::ConnectionManager;
use redis::{RedisResult, Script};

use crate::event::EventId;

pub use config::{write_config, ConfigWrite};
pub use gate::{apply, prepare_gate_benchmark, release, GateDecision};
pub use recovery::{is_marked_recovering, mark_recovering, recovering_events, restore, unmark_recovering, RestoreAnswer, RestoredState};

/// Events whose Redis state is being restored from SQL (members `<ns>/<name>`).
const RECOVERING_SET: &str = "coupon:recovering";

/// Fields of the config hash.
mod field {
    pub const LIMIT: &str = "limit";
    pub const PER_USER: &str = "per_user";
    pub const START_MS: &str = "start_ms";
    pub const END_MS: &str = "end_ms";
    pub const TOPIC: &str = "topic";
    pub const RECOVERING: &str = "recovering";
}

/// The keys of one event, all under one hash tag.
struct EventKeys {
    config: String,
    count: String,
    users: String,
    free: String,
    persisted: String,
}

impl EventKeys {
    fn of(event: &EventId) -> Self {
        let prefix = format!("coupon:{{{event}}}");
        Self {
            config: format!("{prefix}:config"),
            count: format!("{prefix}:count"),
            users: format!("{prefix}:users"),
            free: format!("{prefix}:free"),
            persisted: format!("{prefix}:persisted"),
        }
    }

    fn all(&self) -> [&str; 5] {
        [&self.config, &self.count, &self.users, &self.free, &self.persisted]
    }
}

/// An event's configuration and counters, as the api's stats, the operator's status and
/// `coupon-service event show` report them.
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
pub async fn counters(conn: &mut ConnectionManager, event: &EventId) -> RedisResult<Option<EventCounters>> {
    let keys = EventKeys::of(event);
    #[allow(clippy::type_complexity)]
    let ((limit, per_user, start_ms, end_ms, topic, recovering), count, free, persisted): (
        (Option<i64>, Option<i64>, Option<i64>, Option<i64>, Option<String>, Option<String>),
        Option<i64>,
        i64,
        Option<i64>,
    ) = redis::pipe()
        .hget(&keys.config, &[field::LIMIT, field::PER_USER, field::START_MS, field::END_MS, field::TOPIC, field::RECOVERING])
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

/// The event's limit; `None` if not provisioned (one field, for the consumer's slot rows).
pub async fn limit(conn: &mut ConnectionManager, event: &EventId) -> RedisResult<Option<i64>> {
    redis::cmd("HGET").arg(EventKeys::of(event).config).arg(field::LIMIT).query_async(conn).await
}

/// The event's topic; `None` if not provisioned.
pub async fn topic(conn: &mut ConnectionManager, event: &EventId) -> RedisResult<Option<String>> {
    redis::cmd("HGET").arg(EventKeys::of(event).config).arg(field::TOPIC).query_async(conn).await
}

/// Raises `persisted` to `rows` (never lowers it).
pub async fn raise_persisted(conn: &mut ConnectionManager, event: &EventId, rows: i64) -> RedisResult<()> {
    static RAISE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/raise_persisted.lua")));
    let _: i64 = RAISE.key(EventKeys::of(event).persisted).arg(rows).invoke_async(conn).await?;
    Ok(())
}

/// Removes every key of the event. Returns how many existed.
pub async fn delete_event(conn: &mut ConnectionManager, event: &EventId) -> RedisResult<i64> {
    let keys = EventKeys::of(event);
    redis::cmd("DEL").arg(&keys.all()[..]).query_async(conn).await
}

/// How many of the event's keys exist (0: Redis knows nothing of it).
pub async fn existing_keys(conn: &mut ConnectionManager, event: &EventId) -> RedisResult<i64> {
    let keys = EventKeys::of(event);
    redis::cmd("EXISTS").arg(&keys.all()[..]).query_async(conn).await
}

/// Everything Redis holds for an event, sorted, for "nothing changed" checks and diagnostics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventSnapshot {
    /// The config hash, by field.
    pub config: Vec<(String, String)>,
    pub count: Option<i64>,
    /// Users holding a mark.
    pub users: Vec<String>,
    /// The free list, in order.
    pub free: Vec<i64>,
}

/// Reads an event's whole state (O(users): diagnostics and tests only, never a hot path).
pub async fn snapshot(conn: &mut ConnectionManager, event: &EventId) -> RedisResult<EventSnapshot> {
    let keys = EventKeys::of(event);
    #[allow(clippy::type_complexity)]
    let (mut config, count, mut users, free): (Vec<(String, String)>, Option<i64>, Vec<String>, Vec<i64>) =
        redis::pipe().hgetall(&keys.config).get(&keys.count).smembers(&keys.users).lrange(&keys.free, 0, -1).query_async(conn).await?;
    config.sort();
    users.sort();
    Ok(EventSnapshot { config, count, users, free })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        let id = EventId::new("shop", "black-friday").unwrap();
        let keys = EventKeys::of(&id);
        for key in keys.all() {
            assert!(key.starts_with("coupon:{shop/black-friday}:"), "{key}");
        }
        assert_eq!(keys.count, "coupon:{shop/black-friday}:count");
    }
}

//! The Redis keyspace: the one place that names keys and hash fields, holds the Lua scripts
//! (`lua/*.lua`) and sends commands. Every read and write of the system goes through a
//! typed function here.
//!
//! # Layout (the reference)
//!
//! One event is one Redis hash tag, `{<namespace>/<name>}`, so all of its keys live in the
//! same Redis Cluster slot and one script can touch them atomically. An event of K shards
//! (`EventLayout`, `layout.rs`) has K such tags, each with every key below; shard 0 is the
//! event's own tag. Each shard decides its users (by `home_shard`) and hands out the slots of
//! its stride (`shard + 1 + k·K`); stock moves between shards by grants
//! (`docs/architecture.md`, "Redis Cluster and sharded events").
//!
//! | key | type | holds |
//! |---|---|---|
//! | `coupon:{ns/name}:config` | hash | `limit`, `per_user`, `start_ms`, `end_ms` (window, server time in ms), `topic`, `paused`, `shards` and `shard` (absent: 1 and 0), `incarnation` (the UID of the `CouponEvent` the event belongs to, written at creation and never changed: records and rows carry it in their event key), `server` (replication id of the Redis the state was last verified on); while the state is being verified against SQL also `recovering` = `1`, `recovering_since_ms` and, during the write-back, `restoring` and `restore_server`. A deleted event leaves only `deleted` = `1` here for a day (a tombstone) |
//! | `coupon:{ns/name}:count` | integer | slots of the shard's stride handed out (with one shard: the highest slot ever handed out; never beyond `limit`) |
//! | `coupon:{ns/name}:users` | hash | user → their entries, `slot:state` separated by spaces; state `p` pending (issued, record not yet acknowledged), `a` acknowledged by the broker (the user was answered 201), `w` written to SQL after that, `x` written to SQL but never confirmed to the user (their next apply answers 201 without producing). One entry per user today; `per_user` > 1 adds entries to the same value |
//! | `coupon:{ns/name}:unwritten` | sorted set | `slot:user` of every entry not yet written, scored by its delivery deadline (server ms): what healing looks at |
//! | `coupon:{ns/name}:free` | list | slots given back (a produce that certainly failed, or healed); handed out first |
//! | `coupon:{ns/name}:persisted` | integer | entries written to SQL |
//! | `coupon:{ns/name}:healed` | integer | entries given back by healing |
//! | `coupon:{ns/name}:held` | integer | slots the shard's users hold (a sharded event's `issued` is the sum) |
//! | `coupon:{ns/name}:grants` | hash | grant id → `target slot slot ...`: stock this shard gave and that is not settled yet |
//! | `coupon:{ns/name}:grant_deadlines` | sorted set | grant ids by deadline (server ms): when healing may close them |
//! | `coupon:{ns/name}:accepted` / `:refused` | sets | grant ids this shard took / refused for good |
//! | `coupon:{ns/name}:call:<id>` | string | one gate call's answers (JSON), kept for the lease when the call issued, redelivered or confirmed a slot, so that a resent call answers the same; expires by itself |
//! | `coupon:events` | set | every provisioned event (`ns/name`), for the consumer's verification and healing passes; outside any event's hash tag |
//!
//! Issued coupons are `count - len(free)` with one shard, the sum of `held` with several.
//!
//! Every script is `lua/common.lua` followed by its own file (`script!`).

mod config;
mod eviction;
mod gate;
mod grants;
mod heal;
mod issued;
mod layout;
mod recovery;

use crate::redis::RedisConnection;
use redis::RedisResult;

use crate::event::{EventId, EventKey};

pub use config::{write_config, ConfigWrite};
pub use eviction::{eviction, set_eviction_for_tests, Eviction, EvictionRisk};
pub use gate::{ack, apply, apply_many, prepare_gate_benchmark, release, unique_id, GateDecision, Grant};
pub use grants::{close_grant, expired_grants, grant, settle_grant, stock, stride_left, GrantVerdict, ShardStock};
pub use heal::{heal, mark_written, overdue_entries, HealVerdict, Healed, OverdueEntry};
pub use issued::issued_to;
use layout::EventKeys;
pub use layout::{home_shard, EventLayout};
pub use recovery::{fence, restore_begin, restore_chunk, restore_finish, RestoreStep};

/// A script of this keyspace: `lua/common.lua` (shared helpers) followed by `lua/<name>.lua`.
/// `Script::invoke_async` sends EVALSHA and loads the script again when Redis answers
/// NOSCRIPT (after a restart or `SCRIPT FLUSH`).
macro_rules! script {
    ($name:literal) => {{
        static SCRIPT: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new($crate::redis::keyspace::script_source!($name)));
        &*SCRIPT
    }};
}

/// The source text of a keyspace script (`script!`).
macro_rules! script_source {
    ($name:literal) => {
        concat!(include_str!("lua/common.lua"), "\n", include_str!(concat!("lua/", $name, ".lua")))
    };
}
pub(crate) use {script, script_source};

/// Every provisioned event (members `<ns>/<name>`).
const EVENTS: &str = "coupon:events";

/// How long a deleted event's tombstone stays.
const TOMBSTONE_TTL_SECS: u64 = 24 * 3600;

/// Fields of the config hash.
mod field {
    pub const LIMIT: &str = "limit";
    pub const PER_USER: &str = "per_user";
    pub const START_MS: &str = "start_ms";
    pub const END_MS: &str = "end_ms";
    pub const TOPIC: &str = "topic";
    pub const RECOVERING: &str = "recovering";
    pub const INCARNATION: &str = "incarnation";
    pub const DELETED: &str = "deleted";
    pub const SHARDS: &str = "shards";
}

/// An event's configuration and counters, as the api's stats, the operator's status, the
/// consumer's metrics and `coupon-service event show` report them.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct EventCounters {
    pub limit: i64,
    pub per_user: i64,
    pub start_ms: i64,
    pub end_ms: i64,
    pub topic: String,
    /// Slots currently held by users: `count - len(free)`.
    pub issued: i64,
    /// Entries written to SQL.
    pub persisted: i64,
    /// Entries not yet written (being delivered, or waiting to be healed).
    pub unwritten: i64,
    /// Entries given back by healing since the event was provisioned or restored.
    pub healed: i64,
    pub recovering: bool,
    /// The object the event belongs to (see `EventKey`).
    pub incarnation: Option<String>,
}

impl EventCounters {
    /// The key the event's records and rows carry; `None` if the stored incarnation is not
    /// a valid one (written by hand: provisioning validates it).
    pub fn key(&self, event: &EventId) -> Option<EventKey> {
        EventKey::new(event.clone(), self.incarnation.as_deref()).ok()
    }
}

/// Reads an event's configuration and counters: one pipeline per shard; `None` if not
/// provisioned. A sharded event's counters are the sums over its shards, and it is
/// recovering while any shard is.
pub async fn counters(conn: &mut RedisConnection, event: &EventId) -> RedisResult<Option<EventCounters>> {
    let home = EventKeys::of(event);
    let Some((mut counters, shards)) = shard_counters(conn, &home).await? else { return Ok(None) };
    if shards > 1 {
        let layout = EventLayout::new(event, shards);
        counters.issued = counters.held;
        for shard in 1..shards {
            if let Some((other, _)) = shard_counters(conn, layout.keys(shard)).await? {
                counters.issued += other.held;
                counters.persisted += other.persisted;
                counters.unwritten += other.unwritten;
                counters.healed += other.healed;
                counters.recovering |= other.recovering;
            }
        }
    }
    Ok(Some(counters.counters))
}

/// One shard's counters and its number of shards.
struct ShardCounters {
    counters: EventCounters,
    held: i64,
}

impl std::ops::Deref for ShardCounters {
    type Target = EventCounters;
    fn deref(&self) -> &EventCounters {
        &self.counters
    }
}

impl std::ops::DerefMut for ShardCounters {
    fn deref_mut(&mut self) -> &mut EventCounters {
        &mut self.counters
    }
}

async fn shard_counters(conn: &mut RedisConnection, keys: &EventKeys) -> RedisResult<Option<(ShardCounters, u16)>> {
    #[allow(clippy::type_complexity)]
    let ((limit, per_user, start_ms, end_ms, topic, recovering, incarnation, shards), count, free, persisted, unwritten, healed, held): (
        (Option<i64>, Option<i64>, Option<i64>, Option<i64>, Option<String>, Option<String>, Option<String>, Option<u16>),
        Option<i64>,
        i64,
        Option<i64>,
        i64,
        Option<i64>,
        Option<i64>,
    ) = redis::pipe()
        .hget(
            &keys.config,
            &[
                field::LIMIT,
                field::PER_USER,
                field::START_MS,
                field::END_MS,
                field::TOPIC,
                field::RECOVERING,
                field::INCARNATION,
                field::SHARDS,
            ],
        )
        .get(&keys.count)
        .llen(&keys.free)
        .get(&keys.persisted)
        .zcard(&keys.unwritten)
        .get(&keys.healed)
        .get(&keys.held)
        .query_async(conn)
        .await?;
    let Some(limit) = limit else { return Ok(None) };
    let counters = EventCounters {
        limit,
        per_user: per_user.unwrap_or(1),
        start_ms: start_ms.unwrap_or(0),
        end_ms: end_ms.unwrap_or(0),
        topic: topic.unwrap_or_default(),
        issued: count.unwrap_or(0) - free,
        persisted: persisted.unwrap_or(0),
        unwritten,
        healed: healed.unwrap_or(0),
        recovering: recovering.as_deref() == Some("1"),
        incarnation,
    };
    Ok(Some((ShardCounters { counters, held: held.unwrap_or(0) }, shards.unwrap_or(1))))
}

/// The event's layout, from its home configuration (`None` if not provisioned).
pub async fn layout(conn: &mut RedisConnection, event: &EventId) -> RedisResult<Option<EventLayout>> {
    let (limit, shards): (Option<i64>, Option<u16>) =
        redis::cmd("HMGET").arg(EventKeys::of(event).config).arg(field::LIMIT).arg(field::SHARDS).query_async(conn).await?;
    Ok(limit.map(|_| EventLayout::new(event, shards.unwrap_or(1))))
}

/// What Redis knows of an event's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventPresence {
    /// Provisioned, for this incarnation. `limit` is the largest limit any of its shards
    /// has, `smallest_limit` the smallest (they differ while a new limit is being written).
    Provisioned { limit: i64, smallest_limit: i64, incarnation: Option<String> },
    /// Deleted (its tombstone is there).
    Deleted,
    /// No configuration at all: never provisioned, or Redis lost it.
    Missing,
}

/// Whether the event is provisioned, deleted or missing, and its limit, for the consumer's
/// slot rows (one hash read per shard).
///
/// A sharded event's limit is the largest of its shards': a limit is written shard by shard,
/// and a shard that already knows a raise hands out slots beyond the limit a shard still
/// writing it (the home shard, on a stalled master) holds. Every slot was issued under some
/// shard's limit, and a limit is never lowered below a slot already issued, so the largest
/// one bounds every slot a gate could have handed out.
pub async fn presence(conn: &mut RedisConnection, event: &EventId) -> RedisResult<EventPresence> {
    let (limit, deleted, incarnation, shards): (Option<i64>, Option<String>, Option<String>, Option<u16>) = redis::cmd("HMGET")
        .arg(EventKeys::of(event).config)
        .arg(field::LIMIT)
        .arg(field::DELETED)
        .arg(field::INCARNATION)
        .arg(field::SHARDS)
        .query_async(&mut *conn)
        .await?;
    let Some(home_limit) = limit else {
        return Ok(if deleted.as_deref() == Some("1") { EventPresence::Deleted } else { EventPresence::Missing });
    };
    let (mut limit, mut smallest_limit) = (home_limit, home_limit);
    let layout = EventLayout::new(event, shards.unwrap_or(1));
    for shard in layout.shards().skip(1) {
        let other: Option<i64> = redis::cmd("HGET").arg(&layout.keys(shard).config).arg(field::LIMIT).query_async(&mut *conn).await?;
        // A shard without configuration (lost, being written back) has no limit to offer.
        let other = other.unwrap_or(0);
        limit = limit.max(other);
        smallest_limit = smallest_limit.min(other);
    }
    Ok(EventPresence::Provisioned { limit, smallest_limit, incarnation })
}

/// The event's topic; `None` if not provisioned.
pub async fn topic(conn: &mut RedisConnection, event: &EventId) -> RedisResult<Option<String>> {
    redis::cmd("HGET").arg(EventKeys::of(event).config).arg(field::TOPIC).query_async(conn).await
}

/// Lists the event among the provisioned ones (done by every configuration write).
async fn register(conn: &mut RedisConnection, event: &EventId) -> RedisResult<()> {
    let _: i64 = redis::cmd("SADD").arg(EVENTS).arg(event.to_string()).query_async(conn).await?;
    Ok(())
}

/// Every provisioned event, as stored (`ns/name`; a caller drops what does not parse).
pub async fn registered_events(conn: &mut RedisConnection) -> RedisResult<Vec<String>> {
    redis::cmd("SMEMBERS").arg(EVENTS).query_async(conn).await
}

/// Takes a member off the list of provisioned events (by its stored name, so malformed ones
/// can go too).
pub async fn unregister(conn: &mut RedisConnection, member: &str) -> RedisResult<()> {
    let _: i64 = redis::cmd("SREM").arg(EVENTS).arg(member).query_async(conn).await?;
    Ok(())
}

/// Removes every key of the event (of every shard, the home shard last, so an interrupted
/// deletion is finished by the next one), leaving a tombstone for a day so that api replicas
/// that served it answer 404 rather than 503. Returns how many keys existed.
pub async fn delete_event(conn: &mut RedisConnection, event: &EventId) -> RedisResult<i64> {
    let layout = layout(conn, event).await?.unwrap_or_else(|| EventLayout::single(event));
    let mut existed = 0;
    for shard in layout.shards().rev() {
        let mut invocation = script!("delete").prepare_invoke();
        for key in layout.keys(shard).all() {
            invocation.key(key);
        }
        let ttl = if shard == 0 { TOMBSTONE_TTL_SECS } else { 0 };
        let removed: i64 = invocation.arg(ttl).invoke_async(&mut *conn).await?;
        existed += removed;
    }
    unregister(conn, &event.to_string()).await?;
    Ok(existed)
}

/// The seconds a deleted event's tombstone has left; `None` when the event has none (not
/// deleted, or the tombstone expired). For checks that a deletion left only the tombstone.
pub async fn tombstone_ttl(conn: &mut RedisConnection, event: &EventId) -> RedisResult<Option<i64>> {
    if presence(conn, event).await? != EventPresence::Deleted {
        return Ok(None);
    }
    let ttl: i64 = redis::cmd("TTL").arg(EventKeys::of(event).config).query_async(conn).await?;
    Ok(Some(ttl))
}

/// Removes every key of one shard, no tombstone: what a master that restarted empty leaves
/// (fault tests only).
#[doc(hidden)]
pub async fn delete_event_shard_for_tests(conn: &mut RedisConnection, layout: &EventLayout, shard: u16) -> RedisResult<i64> {
    let mut invocation = script!("delete").prepare_invoke();
    for key in layout.keys(shard).all() {
        invocation.key(key);
    }
    invocation.arg(0).invoke_async(&mut *conn).await
}

/// Why the state of an earlier object of a name stays (see `retire_event`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retirement {
    /// Removed (a tombstone is left, as by a deletion).
    Removed,
    /// Nothing was there.
    Absent,
    /// The state is of another incarnation than the one named.
    OtherIncarnation,
    /// Being verified against SQL: its counts are not known yet.
    Recovering,
    /// Its window has not ended: it could still issue.
    StillOpen,
    /// Some of its coupons are not written to SQL yet.
    Unwritten,
}

/// Removes the state of an earlier object of the event's name (incarnation `incarnation`)
/// if, and only if, it is finished: its window over, every coupon written, not being
/// verified. Each shard is checked and removed in one script; a sharded event is first
/// checked on every shard, then removed shard by shard, the home shard last (its window is
/// over, so nothing is issued in between).
pub async fn retire_event(conn: &mut RedisConnection, event: &EventId, incarnation: Option<&str>) -> RedisResult<Retirement> {
    let layout = layout(conn, event).await?.unwrap_or_else(|| EventLayout::single(event));
    let retire = |shard: u16, check_only: bool| {
        let mut invocation = script!("retire").prepare_invoke();
        for key in layout.keys(shard).all() {
            invocation.key(key);
        }
        let ttl = if shard == 0 { TOMBSTONE_TTL_SECS } else { 0 };
        invocation.arg(incarnation.unwrap_or_default()).arg(ttl).arg(if check_only { "1" } else { "0" });
        invocation
    };
    if layout.is_sharded() {
        for shard in layout.shards() {
            let answer: i64 = retire(shard, true).invoke_async(&mut *conn).await?;
            if answer != 1 {
                return Ok(retirement(answer));
            }
        }
    }
    let mut answer = 0;
    for shard in layout.shards().rev() {
        answer = retire(shard, false).invoke_async(&mut *conn).await?;
    }
    if answer == 1 {
        unregister(conn, &event.to_string()).await?;
    }
    Ok(retirement(answer))
}

fn retirement(answer: i64) -> Retirement {
    match answer {
        1 => Retirement::Removed,
        0 => Retirement::Absent,
        -1 => Retirement::OtherIncarnation,
        -2 => Retirement::Recovering,
        -3 => Retirement::StillOpen,
        _ => Retirement::Unwritten,
    }
}

/// How many of the event's keys hold state (0: Redis knows nothing of it, or only its
/// tombstone).
pub async fn existing_keys(conn: &mut RedisConnection, event: &EventId) -> RedisResult<i64> {
    let layout = layout(conn, event).await?.unwrap_or_else(|| EventLayout::single(event));
    let mut existing = 0;
    for shard in layout.shards() {
        let keys = layout.keys(shard);
        let (config, others): (i64, i64) =
            redis::pipe().hexists(&keys.config, field::LIMIT).exists(&keys.all()[1..]).query_async(conn).await?;
        existing += config + others;
    }
    Ok(existing)
}

/// A user's coupon in the gate.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Holding {
    pub slot: i64,
    pub state: HoldingState,
    /// Whether the user was answered 201 for it (false for a row written after an apply
    /// that answered 503: their next apply answers 201).
    #[serde(skip)]
    pub confirmed: bool,
}

/// How far a user's coupon got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldingState {
    /// Issued; the record's delivery has not been acknowledged (yet).
    Pending,
    /// The broker acknowledged the record.
    Acknowledged,
    /// The consumer wrote the row.
    Persisted,
}

/// Parses a user's entries (`slot:state` separated by spaces).
fn parse_holdings(value: &str) -> Vec<Holding> {
    value
        .split_ascii_whitespace()
        .filter_map(|entry| {
            let (slot, state) = entry.split_once(':')?;
            let (state, confirmed) = match state {
                "p" => (HoldingState::Pending, false),
                "a" => (HoldingState::Acknowledged, true),
                "w" => (HoldingState::Persisted, true),
                "x" => (HoldingState::Persisted, false),
                _ => return None,
            };
            Some(Holding { slot: slot.parse().ok()?, state, confirmed })
        })
        .collect()
}

/// The coupons `user` holds in the event (one read, on the user's home shard).
pub async fn holdings(conn: &mut RedisConnection, layout: &EventLayout, user: &str) -> RedisResult<Vec<Holding>> {
    let value: Option<String> = redis::cmd("HGET").arg(&layout.user_keys(user).1.users).arg(user).query_async(conn).await?;
    Ok(value.as_deref().map(parse_holdings).unwrap_or_default())
}

/// Every user's entries (of every shard), read with `HSCAN` in steps of 1,000 (never one long
/// command), or `None` if there are more than `max` users (the caller then reads entries one
/// by one). For the api's sold-out short cut: once an event is sold out its holders change
/// only through a release, a heal or a restore, which the shards' `holders_version` count.
pub async fn holders(
    conn: &mut RedisConnection,
    layout: &EventLayout,
    max: usize,
) -> RedisResult<Option<std::collections::HashMap<String, Holding>>> {
    let mut holders = std::collections::HashMap::new();
    for shard in layout.shards() {
        let key = &layout.keys(shard).users;
        let mut cursor: u64 = 0;
        loop {
            let (next, page): (u64, Vec<(String, String)>) =
                redis::cmd("HSCAN").arg(key).arg(cursor).arg("COUNT").arg(1000).query_async(conn).await?;
            for (user, value) in page {
                if let Some(first) = parse_holdings(&value).into_iter().next() {
                    holders.insert(user, first);
                }
            }
            if holders.len() > max {
                return Ok(None);
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(Some(holders))
}

/// A user's coupon as `GET /v1/events/{event}/users/{userId}` reads it: whether the event is
/// provisioned and being verified, and the user's entries (one read-only round trip).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserView {
    pub provisioned: bool,
    pub recovering: bool,
    pub holdings: Vec<Holding>,
}

/// Reads `UserView` in one pipeline, on the user's home shard (whose configuration is a copy
/// of the event's).
pub async fn user_view(conn: &mut RedisConnection, layout: &EventLayout, user: &str) -> RedisResult<UserView> {
    let keys = layout.user_keys(user).1;
    let ((limit, recovering), value): ((Option<i64>, Option<String>), Option<String>) =
        redis::pipe().hget(&keys.config, &[field::LIMIT, field::RECOVERING]).hget(&keys.users, user).query_async(conn).await?;
    Ok(UserView {
        provisioned: limit.is_some(),
        recovering: recovering.as_deref() == Some("1"),
        holdings: value.as_deref().map(parse_holdings).unwrap_or_default(),
    })
}

/// `WAIT`: blocks until `replicas` replicas of the master of `user`'s home shard acknowledged
/// the writes this connection made there, or `timeout`; returns how many did.
pub async fn wait_for_replicas(
    conn: &mut RedisConnection,
    layout: &EventLayout,
    user: &str,
    replicas: u32,
    timeout: std::time::Duration,
) -> RedisResult<i64> {
    let key = &layout.user_keys(user).1.config;
    conn.query_at(key, redis::cmd("WAIT").arg(replicas).arg(timeout.as_millis() as u64)).await
}

/// Everything Redis holds for an event, sorted, for "nothing changed" checks and diagnostics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventSnapshot {
    /// The config hash, by field.
    pub config: Vec<(String, String)>,
    pub count: Option<i64>,
    /// Users holding an entry.
    pub users: Vec<String>,
    /// Every user's entries, by user.
    pub entries: Vec<(String, Vec<Holding>)>,
    /// The free list, in order.
    pub free: Vec<i64>,
    /// `slot:user` of entries not yet written.
    pub unwritten: Vec<String>,
}

/// Reads an event's whole state (O(users): diagnostics and tests only, never a hot path); of
/// its home shard.
pub async fn snapshot(conn: &mut RedisConnection, event: &EventId) -> RedisResult<EventSnapshot> {
    snapshot_shard(conn, &EventLayout::single(event), 0).await
}

/// Reads one shard's whole state (diagnostics and tests only).
pub async fn snapshot_shard(conn: &mut RedisConnection, layout: &EventLayout, shard: u16) -> RedisResult<EventSnapshot> {
    let keys = layout.keys(shard);
    #[allow(clippy::type_complexity)]
    let (mut config, count, mut users, free, mut unwritten): (
        Vec<(String, String)>,
        Option<i64>,
        Vec<(String, String)>,
        Vec<i64>,
        Vec<String>,
    ) = redis::pipe()
        .hgetall(&keys.config)
        .get(&keys.count)
        .hgetall(&keys.users)
        .lrange(&keys.free, 0, -1)
        .zrange(&keys.unwritten, 0, -1)
        .query_async(conn)
        .await?;
    config.sort();
    users.sort();
    unwritten.sort();
    let entries: Vec<(String, Vec<Holding>)> = users
        .into_iter()
        .map(|(user, value)| {
            let h = parse_holdings(&value);
            (user, h)
        })
        .collect();
    Ok(EventSnapshot { config, count, users: entries.iter().map(|(u, _)| u.clone()).collect(), entries, free, unwritten })
}

/// Up to `max` members of the sorted set `key` scored at or before `cutoff_ms`, lowest first
/// (the overdue entries of `unwritten`, the expired grants of `grant_deadlines`).
async fn due_members(conn: &mut RedisConnection, key: &str, cutoff_ms: i64, max: usize) -> RedisResult<Vec<String>> {
    redis::cmd("ZRANGE").arg(key).arg("-inf").arg(cutoff_ms).arg("BYSCORE").arg("LIMIT").arg(0).arg(max).query_async(conn).await
}

/// Server time in ms (for cut-offs compared with scores the scripts wrote), of the master of
/// the list of events (the masters of a cluster keep their clocks in step, as the cut-offs'
/// settle time assumes).
pub async fn server_time_ms(conn: &mut RedisConnection) -> RedisResult<i64> {
    let (secs, micros): (i64, i64) = conn.query_at(EVENTS, &redis::cmd("TIME")).await?;
    Ok(secs * 1000 + micros / 1000)
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

    #[test]
    fn entries_parse_and_skip_what_is_not_an_entry() {
        assert_eq!(
            parse_holdings("3:p 7:w x:y 9:q 4:x"),
            vec![
                Holding { slot: 3, state: HoldingState::Pending, confirmed: false },
                Holding { slot: 7, state: HoldingState::Persisted, confirmed: true },
                Holding { slot: 4, state: HoldingState::Persisted, confirmed: false }
            ]
        );
        assert!(parse_holdings("").is_empty());
    }
}

//! Reading an event's configuration: its counters, layout, presence and topic.

use redis::RedisResult;

use crate::event::{EventId, EventKey};
use crate::redis::RedisConnection;

use super::{field, EventKeys, EventLayout};

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
    counters_in(conn, &EventLayout::single(event)).await
}

/// As `counters`, with the event's layout as the caller last knew it (the api keeps it, since
/// placing the shards of a sharded event takes thousands of hashes): used as long as the
/// home configuration names the same number of shards, else placed again.
pub async fn counters_in(conn: &mut RedisConnection, known: &EventLayout) -> RedisResult<Option<EventCounters>> {
    let Some((mut counters, shards)) = shard_counters(conn, known.home()).await? else { return Ok(None) };
    if shards > 1 {
        let placed;
        let layout = if known.shard_count() == shards {
            known
        } else {
            placed = EventLayout::new(known.event(), shards);
            &placed
        };
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

//! An event's whole state, for "nothing changed" checks and diagnostics.

use redis::RedisResult;

use crate::event::EventId;
use crate::redis::RedisConnection;

use super::{holdings::parse_holdings, EventLayout, Holding};

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

//! Read-only views of an event's raw keys, as the table in `mod.rs` documents them: for
//! tests that check what a script wrote, and for tools that look. Nothing here writes, and
//! nothing here is on a request's path.

use std::collections::HashMap;

use redis::RedisResult;

use super::layout::{EventKeys, EventLayout};
use crate::event::EventId;
use crate::redis::RedisConnection;

/// A counter of the event's home shard (`count`, `held`, `persisted`, ...); 0 if absent.
pub async fn home_counter(conn: &mut RedisConnection, event: &EventId, name: &str) -> RedisResult<i64> {
    let value: Option<i64> = redis::cmd("GET").arg(EventKeys::of(event).named(name)).query_async(conn).await?;
    Ok(value.unwrap_or(0))
}

/// Every user's entries on the event's home shard, as stored (`slot:state[:ordinal] ...`).
pub async fn home_entries(conn: &mut RedisConnection, event: &EventId) -> RedisResult<HashMap<String, String>> {
    redis::cmd("HGETALL").arg(EventKeys::of(event).named("users")).query_async(conn).await
}

/// The pending deliveries' leases on the event's home shard: `(slot:user, deadline_ms)`.
pub async fn home_leases(conn: &mut RedisConnection, event: &EventId) -> RedisResult<Vec<(String, i64)>> {
    redis::cmd("ZRANGE").arg(EventKeys::of(event).named("unwritten")).arg(0).arg(-1).arg("WITHSCORES").query_async(conn).await
}

/// How many `Idempotency-Key`s of `user` are kept, and how long their hash has left (ms;
/// negative when there is none, as `PTTL` answers).
pub async fn idempotency_keys_kept(conn: &mut RedisConnection, layout: &EventLayout, user: &str) -> RedisResult<(i64, i64)> {
    let hash = layout.user_keys(user).1.idempotency_keys(user);
    redis::pipe().hlen(&hash).pttl(&hash).query_async(conn).await
}

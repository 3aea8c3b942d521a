//! The list of provisioned events, and removing an event's state: deletion (with its
//! tombstone) and the retirement of an earlier object's.

use redis::RedisResult;

use crate::event::EventId;
use crate::redis::RedisConnection;

use super::{contract, field, layout, presence, Answer, EventKeys, EventLayout, EventPresence, EVENTS, TOMBSTONE_TTL_SECS};

/// Lists the event among the provisioned ones (done by every configuration write).
pub(crate) async fn register(conn: &mut RedisConnection, event: &EventId) -> RedisResult<()> {
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
        let mut invocation = contract::DELETE.invocation(layout.keys(shard), &[]);
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
    let mut invocation = contract::DELETE.invocation(layout.keys(shard), &[]);
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
        let mut invocation = contract::RETIRE.invocation(layout.keys(shard), &[]);
        let ttl = if shard == 0 { TOMBSTONE_TTL_SECS } else { 0 };
        invocation.arg(incarnation.unwrap_or_default()).arg(ttl).arg(if check_only { "1" } else { "0" });
        invocation
    };
    if layout.is_sharded() {
        for shard in layout.shards() {
            let answer = retirement(retire(shard, true).invoke_async(&mut *conn).await?)?;
            if answer != Retirement::Removed {
                return Ok(answer);
            }
        }
    }
    let mut answer = Retirement::Absent;
    for shard in layout.shards().rev() {
        answer = retirement(retire(shard, false).invoke_async(&mut *conn).await?)?;
    }
    if answer == Retirement::Removed {
        unregister(conn, &event.to_string()).await?;
    }
    Ok(answer)
}

fn retirement(code: i64) -> RedisResult<Retirement> {
    Ok(match Answer::of("retire", code)? {
        Answer::Done => Retirement::Removed,
        Answer::Nothing => Retirement::Absent,
        Answer::OtherIncarnation => Retirement::OtherIncarnation,
        Answer::Recovering => Retirement::Recovering,
        Answer::StillOpen => Retirement::StillOpen,
        Answer::Unwritten => Retirement::Unwritten,
        other => return Err(other.unexpected("retire")),
    })
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

//! Fencing and the restore of an event's state from SQL.
//!
//! The gate answers 503 `recovering` when the event's state was last verified on another
//! Redis server (a restart, a failover, a restored snapshot: any of them may have lost
//! acknowledged writes) or when the operator wrote back a lost configuration. The consumer,
//! which owns SQL, then writes the state back from the rows in chunks: `restore_begin`,
//! `restore_chunk` as often as needed, `restore_finish`. The event stays closed throughout,
//! and a token and the server's identity make a restore that was taken over by another
//! consumer, or interrupted by a failover, fail instead of opening a half-restored event.

use crate::redis::RedisConnection;
use redis::RedisResult;

use super::{contract, Answer, EventLayout};

/// Runs the gate's fencing check on one shard, for events nobody applies to; with `force`,
/// marks it recovering in any case (another shard is: shards are restored together).
/// Returns `Some(true)` if the shard is recovering (perhaps marked just now), `None` if it
/// has no configuration.
pub async fn fence(conn: &mut RedisConnection, layout: &EventLayout, shard: u16, force: bool) -> RedisResult<Option<bool>> {
    let answer: i64 = contract::FENCE.invocation(layout.keys(shard), &[]).arg(if force { "1" } else { "0" }).invoke_async(conn).await?;
    Ok(match Answer::of("fence", answer)? {
        Answer::Missing => None,
        Answer::Recovering => Some(true),
        Answer::Verified => Some(false),
        other => return Err(other.unexpected("fence")),
    })
}

/// How a restore step ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestoreStep {
    Done,
    /// The event is not marked recovering (any more): nothing written.
    NotRecovering,
    /// Marked less than `settle` ago: nothing written yet.
    TooEarly,
    /// Another restore took over, or the server changed: start again.
    Interrupted,
    /// The limit is below the highest slot with a row: the event stays recovering.
    LimitBelowRows,
    /// Another consumer's restore is under way (its heartbeat is fresh).
    Busy,
}

/// Starts a restore under `token` if the recovering mark was made at or before
/// `not_after_ms` minus the longest delivery lease (server time; the caller passes when its
/// drain check began, minus its settle time): clears the counters, the users, the free list
/// and the unwritten entries.
/// `owner` names the restoring process, which may take over its own interrupted restore.
/// `epoch` is the same for every shard of one restore: grants between shards made before it
/// are void.
#[allow(clippy::too_many_arguments)]
pub async fn restore_begin(
    conn: &mut RedisConnection,
    layout: &EventLayout,
    shard: u16,
    token: &str,
    owner: &str,
    not_after_ms: i64,
    epoch: i64,
) -> RedisResult<RestoreStep> {
    let keys = layout.keys(shard);
    let answer: i64 =
        contract::RESTORE_BEGIN.invocation(keys, &[]).arg(not_after_ms).arg(token).arg(owner).arg(epoch).invoke_async(conn).await?;
    Ok(match Answer::of("restore_begin", answer)? {
        Answer::Done => RestoreStep::Done,
        Answer::TooEarly => RestoreStep::TooEarly,
        Answer::Busy => RestoreStep::Busy,
        Answer::Nothing => RestoreStep::NotRecovering,
        other => return Err(other.unexpected("restore_begin")),
    })
}

/// Writes back chunk number `chunk` (1, 2, ... per shard and restore; a chunk sent again is
/// not written twice) of a shard: rows `(user, slot, ordinal)` of its users and free slots.
#[allow(clippy::too_many_arguments)]
pub async fn restore_chunk(
    conn: &mut RedisConnection,
    layout: &EventLayout,
    shard: u16,
    token: &str,
    chunk: u64,
    rows: &[&(String, i64, i64)],
    free: &[i64],
) -> RedisResult<RestoreStep> {
    let keys = layout.keys(shard);
    let mut invocation = contract::RESTORE_CHUNK.invocation(keys, &[]);
    invocation.arg(token).arg(chunk).arg(rows.len());
    for (user, slot, ordinal) in rows {
        invocation.arg(user).arg(*slot).arg(*ordinal);
    }
    for slot in free {
        invocation.arg(*slot);
    }
    let answer: i64 = invocation.invoke_async(conn).await?;
    Ok(match Answer::of("restore_chunk", answer)? {
        Answer::Done => RestoreStep::Done,
        Answer::TakenOver => RestoreStep::Interrupted,
        other => return Err(other.unexpected("restore_chunk")),
    })
}

/// Sets a shard's counter to `count` (the slots of its stride at or below `highest`, the
/// highest slot with a row), stamps the server and opens the shard again.
pub async fn restore_finish(
    conn: &mut RedisConnection,
    layout: &EventLayout,
    shard: u16,
    token: &str,
    count: i64,
    highest: i64,
) -> RedisResult<RestoreStep> {
    let keys = layout.keys(shard);
    let answer: i64 = contract::RESTORE_FINISH.invocation(keys, &[]).arg(token).arg(count).arg(highest).invoke_async(conn).await?;
    Ok(match Answer::of("restore_finish", answer)? {
        Answer::Done => RestoreStep::Done,
        Answer::LimitBelowRows => RestoreStep::LimitBelowRows,
        Answer::TakenOver => RestoreStep::Interrupted,
        other => return Err(other.unexpected("restore_finish")),
    })
}

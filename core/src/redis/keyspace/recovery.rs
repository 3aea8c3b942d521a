//! The recovering mark and the restore of an event's counters from SQL.

use std::sync::LazyLock;

use redis::aio::ConnectionManager;
use redis::{RedisResult, Script};

use super::{EventKeys, RECOVERING_SET};
use crate::event::EventId;

static RESTORE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/restore.lua")));

/// Lists the event for the consumer's restore.
pub async fn mark_recovering(conn: &mut ConnectionManager, event: &EventId) -> RedisResult<()> {
    let _: i64 = redis::cmd("SADD").arg(RECOVERING_SET).arg(event.to_string()).query_async(conn).await?;
    Ok(())
}

/// Events listed for restore, as stored (`ns/name`; a caller drops what does not parse).
pub async fn recovering_events(conn: &mut ConnectionManager) -> RedisResult<Vec<String>> {
    redis::cmd("SMEMBERS").arg(RECOVERING_SET).query_async(conn).await
}

/// Whether the event is listed for restore.
pub async fn is_marked_recovering(conn: &mut ConnectionManager, event: &EventId) -> RedisResult<bool> {
    redis::cmd("SISMEMBER").arg(RECOVERING_SET).arg(event.to_string()).query_async(conn).await
}

/// Takes a member off the restore list (by its stored name, so malformed ones can go too).
pub async fn unmark_recovering(conn: &mut ConnectionManager, member: &str) -> RedisResult<()> {
    let _: i64 = redis::cmd("SREM").arg(RECOVERING_SET).arg(member).query_async(conn).await?;
    Ok(())
}

/// The counters to write back, computed from SQL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoredState {
    /// Highest slot with a row: the counter.
    pub count: i64,
    /// Rows of the event.
    pub persisted: i64,
    /// Slots below the counter without a row: handed out again.
    pub free: Vec<i64>,
    /// Users holding a coupon.
    pub users: Vec<String>,
}

/// What `restore` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestoreAnswer {
    Restored,
    /// The event is not marked recovering (any more): nothing written.
    NotRecovering,
    /// Marked less than `settle` ago: nothing written yet.
    TooEarly,
}

/// Writes the restored counters, only while the event is still marked recovering and the
/// mark is at least `settle` old, and clears the mark.
pub async fn restore(
    conn: &mut ConnectionManager,
    event: &EventId,
    state: &RestoredState,
    settle: std::time::Duration,
) -> RedisResult<RestoreAnswer> {
    let keys = EventKeys::of(event);
    let mut script = RESTORE.prepare_invoke();
    script.key(&keys.config).key(&keys.count).key(&keys.users).key(&keys.free).key(&keys.persisted);
    script.arg(state.count).arg(state.persisted).arg(settle.as_millis() as u64).arg(state.free.len());
    for slot in &state.free {
        script.arg(*slot);
    }
    for user in &state.users {
        script.arg(user);
    }
    let answer: i64 = script.invoke_async(conn).await?;
    Ok(match answer {
        1 => RestoreAnswer::Restored,
        -2 => RestoreAnswer::TooEarly,
        _ => RestoreAnswer::NotRecovering,
    })
}

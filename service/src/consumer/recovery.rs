//! Restoring an event's Redis state from SQL, the source of truth, when Redis may have lost
//! acknowledged writes: its configuration was written back by the operator, or the gate's
//! fencing saw that the state was last verified on another server (a restart, a failover, a
//! restored snapshot).
//!
//! The event answers 503 meanwhile. Once the mark is `settle` old (records issued before
//! the loss have reached the broker) and the topic is drained, the consumer writes back the
//! entries, the free slots below the highest row and the counter, page by page (bounded
//! memory, no long Redis call), then opens the gate again.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use coupon_core::event::{EventId, EventKey};
use coupon_core::kafka::KafkaError;
use coupon_core::redis::keyspace::{self, EventLayout, EventPresence, RestoreStep};
use coupon_core::redis::{RedisConnection, RedisError};

use crate::sql::Store;

/// Rows read from SQL and written to Redis per step.
const RESTORE_PAGE: i64 = 500;
/// Free slots written to Redis per step.
const FREE_CHUNK: usize = 1_000;

/// Why a pass stopped; retried on the next tick.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("Redis: {0}")]
    Redis(#[from] RedisError),
    #[error("SQL: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("drain check did not finish: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// What a finished restore wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// The counter: the highest slot with a row.
    pub count: i64,
    pub rows: i64,
    pub free: i64,
    /// Redis calls made and the longest one.
    pub calls: u64,
    pub longest_call: Duration,
}

/// Restores `event` if it is marked recovering and the mark (plus the longest delivery
/// lease) is no later than `trusted_until_ms`: server time up to which the caller knows every
/// record of the event's topic is in SQL. `Ok(None)`: not restored now (too early, another
/// restore under way, taken over, refused); retried on the next pass.
///
/// A sharded event is restored as a whole (every shard was marked recovering by the
/// caller): each row goes to its user's home shard, each free slot below the highest row to
/// the shard whose stride it belongs to, and each shard's counter to the slots of its stride
/// up to the highest row; stock moved between shards before the loss is void. The home shard
/// opens last.
pub async fn restore_event(
    store: &Store,
    conn: &mut RedisConnection,
    event: &EventId,
    trusted_until_ms: i64,
) -> Result<Option<RestoreReport>, RecoveryError> {
    // Every shard must take the rows: the smallest of their limits (a new limit reaches the
    // shards one by one) decides, or the restore would open some shards and refuse others.
    let EventPresence::Provisioned { smallest_limit: limit, incarnation, .. } = keyspace::presence(conn, event).await? else {
        return Ok(None);
    };
    let Some(layout) = keyspace::layout(conn, event).await? else { return Ok(None) };
    // The rows of this incarnation only: an earlier object of the same name has its own.
    let Ok(key) = EventKey::new(event.clone(), incarnation.as_deref()) else { return Ok(None) };
    let name = key.to_string();
    let highest = store.max_coupon_slot(&name).await?;
    if highest > limit {
        tracing::error!(event = %event, limit, highest_row = highest, "cannot restore: the limit is below the slots that have rows; the event stays closed (503) until the limit is raised");
        return Ok(None);
    }
    let token = restore_token();
    let epoch = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or_default();
    let mut report = RestoreReport::default();
    for shard in layout.shards() {
        let begun = timed(&mut report, keyspace::restore_begin(conn, &layout, shard, &token, &PROCESS, trusted_until_ms, epoch)).await?;
        if begun != RestoreStep::Done {
            return Ok(None);
        }
    }
    let shards = usize::from(layout.shard_count());
    let mut free: Vec<Vec<i64>> = vec![Vec::new(); shards];
    let mut chunks: Vec<u64> = vec![0; shards];
    let mut after = 0;
    loop {
        let page = store.coupons_after(&name, after, RESTORE_PAGE).await?;
        let Some(&(_, last, _)) = page.last() else { break };
        for (_, slot, _) in &page {
            for gap in after + 1..*slot {
                let owner = stride_owner(gap, shards);
                free[owner].push(gap);
                if free[owner].len() == FREE_CHUNK
                    && !send(conn, &layout, owner, &token, &mut chunks[owner], &[], &mut free[owner], &mut report).await?
                {
                    return Ok(None);
                }
            }
            after = *slot;
        }
        for shard in layout.shards() {
            let rows: Vec<&(String, i64, i64)> = page.iter().filter(|(user, _, _)| layout.home_shard(user) == shard).collect();
            let index = usize::from(shard);
            if !rows.is_empty() && !send(conn, &layout, index, &token, &mut chunks[index], &rows, &mut free[index], &mut report).await? {
                tracing::warn!(event = %event, "restore taken over or the server changed; will start again");
                return Ok(None);
            }
        }
        after = last;
    }
    for shard in 0..shards {
        if !free[shard].is_empty() && !send(conn, &layout, shard, &token, &mut chunks[shard], &[], &mut free[shard], &mut report).await? {
            return Ok(None);
        }
    }
    report.count = after;
    for shard in layout.shards().rev() {
        let count = keyspace::stride_left(after, 0, shard, layout.shard_count());
        match timed(&mut report, keyspace::restore_finish(conn, &layout, shard, &token, count, after)).await? {
            RestoreStep::Done => {}
            RestoreStep::LimitBelowRows => {
                tracing::error!(event = %event, count = after, "cannot finish the restore: the limit is below the slots that have rows");
                return Ok(None);
            }
            _ => return Ok(None),
        }
    }
    Ok(Some(report))
}

/// The shard (of `shards`) whose stride holds `slot`.
fn stride_owner(slot: i64, shards: usize) -> usize {
    ((slot - 1) % shards as i64) as usize
}

/// Writes rows and the collected free slots to one shard as its next chunk; `false` if the
/// restore was taken over.
#[allow(clippy::too_many_arguments)]
async fn send(
    conn: &mut RedisConnection,
    layout: &EventLayout,
    shard: usize,
    token: &str,
    chunk: &mut u64,
    rows: &[&(String, i64, i64)],
    free: &mut Vec<i64>,
    report: &mut RestoreReport,
) -> Result<bool, RecoveryError> {
    *chunk += 1;
    let step = timed(report, keyspace::restore_chunk(conn, layout, shard as u16, token, *chunk, rows, free)).await?;
    report.rows += rows.len() as i64;
    report.free += free.len() as i64;
    free.clear();
    Ok(step == RestoreStep::Done)
}

/// Runs one Redis call, recording its duration in the report.
async fn timed<T>(report: &mut RestoreReport, call: impl std::future::Future<Output = Result<T, RedisError>>) -> Result<T, RedisError> {
    let started = Instant::now();
    let result = call.await;
    report.calls += 1;
    report.longest_call = report.longest_call.max(started.elapsed());
    result
}

/// This process, among the consumers that may restore (pids repeat across containers).
static PROCESS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    format!("{}-{nanos}", std::process::id())
});

/// A token no other restore uses.
fn restore_token() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    format!("{}-{nanos}", *PROCESS)
}

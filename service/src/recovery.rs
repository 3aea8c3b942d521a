//! Restoring an event's Redis state from SQL, the source of truth, after Redis lost it.
//!
//! The operator writes a lost configuration back marked `recovering` (the gate answers 503
//! meanwhile) and lists the event in `coupon:recovering`. The consumer, which owns SQL,
//! restores the counter, the user set, the free slots and `persisted` once every record
//! already on the topic is written, then clears the mark.

use std::collections::BTreeSet;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use redis::aio::ConnectionManager;
use redis::Script;

use crate::event_id::EventId;
use crate::kafka::ConsumerEvents;
use crate::provision::RECOVERING_SET;
use crate::store::Store;

/// What was written back to Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    /// Highest slot with a row: the counter.
    pub count: i64,
    /// Users holding a coupon.
    pub users: usize,
    /// Slots below the counter without a row (issued, never written): handed out again.
    pub free: Vec<i64>,
}

/// The state to restore, from the event's rows `(user, slot)`.
pub fn state_from_rows(rows: &[(String, i64)]) -> Restored {
    let count = rows.iter().map(|(_, slot)| *slot).max().unwrap_or(0);
    let taken: BTreeSet<i64> = rows.iter().map(|(_, slot)| *slot).collect();
    let free = (1..=count).filter(|slot| !taken.contains(slot)).collect();
    Restored { count, users: rows.len(), free }
}

/// KEYS: config, count, users, free, persisted. ARGV: count, persisted, settle_ms,
/// number of free slots, the free slots, then the users. Writes only while the event is
/// still marked recovering and the mark is at least `settle_ms` old (so that records issued
/// just before the loss have reached the broker). Answers 1 restored, -1 not recovering,
/// -2 too early.
const RESTORE_LUA: &str = r#"
local mark = redis.call('HMGET', KEYS[1], 'recovering', 'recovering_since_ms')
if mark[1] ~= '1' then return -1 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now - (tonumber(mark[2]) or 0) < tonumber(ARGV[3]) then return -2 end
redis.call('DEL', KEYS[3], KEYS[4])
redis.call('SET', KEYS[2], ARGV[1])
redis.call('SET', KEYS[5], ARGV[2])
local free = tonumber(ARGV[4])
for i = 5, 4 + free do redis.call('RPUSH', KEYS[4], ARGV[i]) end
for i = 5 + free, #ARGV do redis.call('SADD', KEYS[3], ARGV[i]) end
redis.call('HDEL', KEYS[1], 'recovering', 'recovering_since_ms')
return 1
"#;

/// Whether the consumer group has committed every record of the topic: for each partition
/// the committed offset has reached the high watermark. Blocking (broker round trips).
pub fn topic_drained(
    consumer: &StreamConsumer<ConsumerEvents>,
    topic: &str,
    timeout: Duration,
) -> Result<bool, rdkafka::error::KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let Some(topic_metadata) = metadata.topics().iter().find(|t| t.name() == topic) else { return Ok(false) };
    let mut list = TopicPartitionList::new();
    for partition in topic_metadata.partitions() {
        list.add_partition(topic, partition.id());
    }
    let committed = consumer.committed_offsets(list, timeout)?;
    for element in committed.elements() {
        let (low, high) = consumer.fetch_watermarks(topic, element.partition(), timeout)?;
        let position = match element.offset() {
            Offset::Offset(offset) => offset,
            _ => low,
        };
        if position < high {
            return Ok(false);
        }
    }
    Ok(true)
}

/// One pass over the events marked recovering: restores those whose topic is drained.
/// Returns the events restored.
pub async fn restore_drained(
    store: &Store,
    conn: &mut ConnectionManager,
    consumer: std::sync::Arc<StreamConsumer<ConsumerEvents>>,
    settle: Duration,
) -> anyhow::Result<Vec<(EventId, Restored)>> {
    let pending: Vec<String> = redis::cmd("SMEMBERS").arg(RECOVERING_SET).query_async(&mut *conn).await?;
    let mut restored = Vec::new();
    for name in pending {
        let Ok(event) = name.parse::<EventId>() else {
            let _: i64 = redis::cmd("SREM").arg(RECOVERING_SET).arg(&name).query_async(&mut *conn).await?;
            continue;
        };
        let keys = event.keys();
        let topic: Option<String> = redis::cmd("HGET").arg(&keys.config).arg("topic").query_async(&mut *conn).await?;
        let Some(topic) = topic else { continue };
        let probe = consumer.clone();
        let drained = tokio::task::spawn_blocking(move || topic_drained(&probe, &topic, Duration::from_secs(5))).await??;
        if !drained {
            continue;
        }
        let rows = store.coupons(&name).await?;
        let state = state_from_rows(&rows);
        let restore = Script::new(RESTORE_LUA);
        let mut script = restore.prepare_invoke();
        script.key(&keys.config).key(&keys.count).key(&keys.users).key(&keys.free).key(&keys.persisted);
        script.arg(state.count).arg(rows.len()).arg(settle.as_millis() as u64).arg(state.free.len());
        for slot in &state.free {
            script.arg(*slot);
        }
        for (user, _) in &rows {
            script.arg(user);
        }
        let answer: i64 = script.invoke_async(&mut *conn).await?;
        match answer {
            1 => {
                let _: i64 = redis::cmd("SREM").arg(RECOVERING_SET).arg(&name).query_async(&mut *conn).await?;
                tracing::warn!(event = %event, count = state.count, users = state.users, free = state.free.len(), "restored the event's Redis state from SQL");
                restored.push((event, state));
            }
            -1 => {
                let _: i64 = redis::cmd("SREM").arg(RECOVERING_SET).arg(&name).query_async(&mut *conn).await?;
            }
            _ => {}
        }
    }
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_is_the_highest_written_slot_and_gaps_become_free() {
        let rows = vec![("a".to_owned(), 1), ("b".to_owned(), 2), ("c".to_owned(), 5)];
        assert_eq!(state_from_rows(&rows), Restored { count: 5, users: 3, free: vec![3, 4] });
        assert_eq!(state_from_rows(&[]), Restored { count: 0, users: 0, free: vec![] });
    }
}

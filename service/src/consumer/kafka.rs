//! The consumer's Kafka client: a group member that never commits by itself, its rebalance
//! log, and whether the group has committed everything on a topic.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coupon_core::kafka::{KafkaError, KafkaSettings};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};

/// The consumer's client type.
pub type GroupConsumer = StreamConsumer<ConsumerEvents>;

/// A consumer that never commits by itself: offsets are committed only after the SQL
/// transaction holding the records has committed. `assigned` follows the number of
/// partitions the group gave it.
pub fn group_consumer(kafka: &KafkaSettings, group_id: &str, assigned: Arc<AtomicUsize>) -> Result<GroupConsumer, KafkaError> {
    kafka
        .client_config()
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("fetch.wait.max.ms", "50")
        // A topic created after the subscription is seen within seconds, not minutes.
        .set("topic.metadata.refresh.interval.ms", "5000")
        .create_with_context(ConsumerEvents { assigned, rebalances: AtomicU64::new(0) })
}

/// Logs the consumer group's rebalances and keeps the assigned partition count: useful to
/// operators, and lets a caller wait until a new consumer has joined (not part of readiness,
/// since a replica beyond the partition count rightly holds none).
pub struct ConsumerEvents {
    assigned: Arc<AtomicUsize>,
    rebalances: AtomicU64,
}

impl ConsumerEvents {
    /// How many times partitions were assigned or revoked: a change tells the consumer loop
    /// to forget what it knew of partitions it may have lost.
    pub fn rebalances(&self) -> u64 {
        self.rebalances.load(Ordering::Relaxed)
    }
}

impl ClientContext for ConsumerEvents {}

impl ConsumerContext for ConsumerEvents {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances.fetch_add(1, Ordering::Relaxed);
        match rebalance {
            Rebalance::Assign(partitions) => {
                self.assigned.store(partitions.count(), Ordering::Relaxed);
                tracing::info!(partitions = partitions.count(), "partitions assigned");
            }
            Rebalance::Revoke(partitions) => {
                self.assigned.store(0, Ordering::Relaxed);
                tracing::info!(partitions = partitions.count(), "partitions revoked");
            }
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance failed"),
        }
    }
}

/// The high watermark of every partition of `topic` now: a drain target. Blocking (broker
/// round trips).
pub fn high_watermarks(consumer: &GroupConsumer, topic: &str, timeout: Duration) -> Result<Vec<(i32, i64)>, KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let Some(topic_metadata) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(KafkaError::MetadataFetch(rdkafka::types::RDKafkaErrorCode::UnknownTopic));
    };
    if let Some(error) = topic_metadata.error() {
        return Err(KafkaError::MetadataFetch(error.into()));
    }
    if topic_metadata.partitions().is_empty() {
        return Err(KafkaError::MetadataFetch(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition));
    }
    let mut highs = Vec::with_capacity(topic_metadata.partitions().len());
    for partition in topic_metadata.partitions() {
        let (_, high) = consumer.fetch_watermarks(topic, partition.id(), timeout)?;
        highs.push((partition.id(), high));
    }
    Ok(highs)
}

/// How far the group is from a drain target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetProgress {
    /// Committed at least up to the target on every partition.
    Reached,
    NotYet,
    /// The target no longer describes the topic (re-created, offsets below it, partitions
    /// changed): take a new one.
    Stale,
}

/// Whether the consumer group has committed at least up to `targets` (partition, offset) on
/// `topic`: every record written before the targets were read is in SQL. Unlike "committed
/// up to the end now", this is reached while new records keep arriving. Blocking.
pub fn committed_reached(
    consumer: &GroupConsumer,
    topic: &str,
    targets: &[(i32, i64)],
    timeout: Duration,
) -> Result<TargetProgress, KafkaError> {
    let current = high_watermarks(consumer, topic, timeout)?;
    let same_partitions = current.len() == targets.len() && targets.iter().all(|(p, _)| current.iter().any(|(q, _)| q == p));
    let none_below = targets.iter().all(|(p, target)| current.iter().any(|(q, high)| q == p && high >= target));
    if !same_partitions || !none_below {
        return Ok(TargetProgress::Stale);
    }
    let mut list = TopicPartitionList::new();
    for (partition, _) in targets {
        list.add_partition(topic, *partition);
    }
    let committed = consumer.committed_offsets(list, timeout)?;
    for (partition, target) in targets {
        let position = match committed.find_partition(topic, *partition).map(|e| e.offset()) {
            Some(Offset::Offset(offset)) => offset,
            _ => {
                // Nothing committed: reached only if the partition held nothing to commit.
                let (low, _) = consumer.fetch_watermarks(topic, *partition, timeout)?;
                low
            }
        };
        if position < *target {
            return Ok(TargetProgress::NotYet);
        }
    }
    Ok(TargetProgress::Reached)
}

//! The consumer: Kafka → SQL at the pace the database can take.
//!
//! Records are written in batches, one transaction per batch, and offsets are committed only
//! after that transaction committed. A crash between the two redelivers the batch, whose rows
//! are then skipped as duplicates: every record becomes exactly one row.

pub mod batch;
pub mod healing;
pub mod kafka;
mod progress;
pub mod recovery;
mod topics;
mod verify;
mod writer;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use coupon_core::kafka::KafkaError;
use coupon_core::redis::RedisHandle;
use coupon_core::retry::Backoff;
use coupon_core::secrets::redact_url;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::app::ConsumerSettings;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::sql::{Position, Store};
use batch::RawRecord;
use kafka::GroupConsumer;
use progress::Progress;
pub use writer::{BatchError, BatchWriter, BatchWritten};

/// Records held (their event's configuration missing) beyond which the consumer takes no
/// new records until some are written or failed: memory stays bounded however long Redis
/// takes to get the configuration back.
const MAX_HELD_RECORDS: usize = 100_000;

/// Health components of the consumer.
pub const COMPONENTS: &[&str] = &["sql", "kafka", "redis"];

/// Why the consumer stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("consumer task ended abnormally: {0}")]
    Task(String),
}

/// Connects to SQL with backoff and applies migrations; returns `None` on shutdown.
pub async fn connect_store(url: &str, health: &Health, shutdown: &mut watch::Receiver<bool>) -> Option<Store> {
    let shown = redact_url(url);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let attempt = async {
            let store = Store::connect(url).await.map_err(|e| e.to_string())?;
            store.migrate().await.map_err(|e| format!("migration failed: {e}"))?;
            Ok::<_, String>(store)
        };
        match attempt.await {
            Ok(store) => {
                tracing::info!(database = %shown, dialect = store.dialect(), "connected to SQL, migrations applied");
                health.set("sql", true);
                return Some(store);
            }
            Err(error) => {
                let wait = backoff.next_delay();
                tracing::warn!(database = %shown, %error, retry_in = ?wait, "cannot reach SQL");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return None,
                }
            }
        }
    }
}

/// Runs the consumer until `shutdown` turns true. The batch in hand is finished and its
/// offsets committed before returning.
pub async fn run(
    settings: ConsumerSettings,
    redis: RedisHandle,
    health: Health,
    metrics: Arc<Metrics>,
    assigned: Arc<AtomicUsize>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ConsumerError> {
    let consumer = Arc::new(kafka::group_consumer(&settings.kafka, &settings.group_id, assigned)?);
    {
        let probe_consumer = consumer.clone();
        health.spawn_probe("kafka", Duration::from_secs(2), move || {
            let c = probe_consumer.clone();
            async move { tokio::task::spawn_blocking(move || c.fetch_metadata(None, Duration::from_secs(2)).is_ok()).await.unwrap_or(false) }
        });
        let probe_redis = redis.clone();
        health.spawn_probe("redis", Duration::from_secs(2), move || {
            let r = probe_redis.clone();
            async move { r.ping().await }
        });
    }
    let Some(store) = connect_store(&settings.database_url, &health, &mut shutdown).await else { return Ok(()) };
    {
        let probe_store = store.clone();
        health.spawn_probe("sql", Duration::from_secs(2), move || {
            let s = probe_store.clone();
            async move { s.ping().await.is_ok() }
        });
    }
    let mut topics = topics::Topics::new(&settings.topics, settings.event_namespace.clone());
    subscribe(&consumer, &topics.current())?;
    tracing::info!(topics = ?settings.topics, group = %settings.group_id, event_namespace = ?settings.event_namespace, "consuming");
    let mut writer =
        BatchWriter::new(store, redis.clone(), metrics.clone(), settings.missing_event_patience, settings.event_namespace.clone())
            .with_record_keys(settings.record_keys.clone(), settings.signatures_required);
    let mut verifier = verify::Verifier::new(&topics.current(), settings.recovery_settle);
    // The first look after one period: the start-up subscription has just rebalanced.
    let mut topics_tick = tokio::time::interval_at(tokio::time::Instant::now() + topics::REFRESH, topics::REFRESH);
    topics_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut pending_offsets = PendingOffsets::new();
    let mut verify_tick = tokio::time::interval(Duration::from_secs(1));
    verify_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let batch_size = settings.batch_size.max(1);

    let mut progress = Progress::default();
    let mut seen_rebalances = consumer.context().rebalances();

    loop {
        let first = tokio::select! {
            message = consumer.recv(), if progress.held_count() < MAX_HELD_RECORDS => message,
            _ = verify_tick.tick() => {
                forget_lost_partitions(&consumer, &mut progress, &mut pending_offsets, &mut seen_rebalances);
                commit_pending(&consumer, &mut pending_offsets, &metrics);
                let held = progress.take_held();
                if !held.is_empty() {
                    // Another try for the records of events whose configuration was missing.
                    if let Some(written) = write_batch(&mut writer, &held, &health).await {
                        finish_batch(&consumer, &mut writer, &mut progress, &mut pending_offsets, &held, written, &metrics).await;
                    } else {
                        progress.hold(held);
                    }
                }
                metrics.records_held.set(progress.held_count() as i64);
                if let Some(mut conn) = redis.get() {
                    verifier.pass(&mut writer, &mut conn, &consumer, &metrics).await;
                }
                continue;
            }
            _ = topics_tick.tick() => {
                if let Some(mut conn) = redis.get() {
                    match topics.refresh(&mut conn).await {
                        Ok(Some(grown)) => {
                            // A new subscription rebalances the group: only with every written
                            // batch committed, else on the next tick.
                            if !commit_pending(&consumer, &mut pending_offsets, &metrics) {
                                continue;
                            }
                            if let Err(error) = subscribe(&consumer, &grown) {
                                tracing::warn!(%error, "cannot subscribe to the new topics; retried on the next tick");
                            } else {
                                tracing::info!(topics = ?grown, "following the topics of new events");
                                topics.subscribed(&grown);
                                verifier.set_topics(&grown);
                            }
                        }
                        Ok(None) => {}
                        Err(error) => tracing::warn!(%error, "cannot read the event registry for new topics"),
                    }
                }
                continue;
            }
            _ = shutdown.changed() => break,
        };
        let mut batch = Vec::with_capacity(batch_size);
        match first {
            Ok(message) => batch.push(owned(&message)),
            Err(error) => {
                tracing::warn!(%error, "Kafka consume error");
                continue;
            }
        }
        let deadline = tokio::time::Instant::now() + settings.batch_linger;
        while batch.len() < batch_size {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(message)) => batch.push(owned(&message)),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "Kafka consume error");
                    break;
                }
                Err(_) => break,
            }
        }

        if let Some(assigned) = forget_lost_partitions(&consumer, &mut progress, &mut pending_offsets, &mut seen_rebalances) {
            // Records fetched before a rebalance took their partition away are the new
            // owner's, from the committed offset.
            batch.retain(|record| assigned.contains(&(record.position.topic.clone(), record.position.partition)));
            if batch.is_empty() {
                continue;
            }
        }
        progress.read(&batch);
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let written = loop {
            if let Some(written) = write_batch(&mut writer, &batch, &health).await {
                break written;
            }
            let wait = backoff.next_delay();
            tracing::warn!(records = batch.len(), retry_in = ?wait, "batch not written; offsets stay uncommitted");
            let retry_at = tokio::time::Instant::now() + wait;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(retry_at) => break,
                    // Verification goes on while a batch waits (a batch held up by SQL must
                    // not stop the restores and healing of the events).
                    _ = verify_tick.tick() => {
                        if let Some(mut conn) = redis.get() {
                            verifier.pass(&mut writer, &mut conn, &consumer, &metrics).await;
                        }
                    }
                    // Stopping here leaves the batch uncommitted: it is redelivered.
                    _ = shutdown.changed() => return Ok(()),
                }
            }
        };
        finish_batch(&consumer, &mut writer, &mut progress, &mut pending_offsets, &batch, written, &metrics).await;
    }
    commit_pending(&consumer, &mut pending_offsets, &metrics);
    tracing::info!("consumer stopped");
    Ok(())
}

/// One try at writing a batch; `None` (logged, SQL health updated) if it must be retried.
async fn write_batch(writer: &mut BatchWriter, batch: &[RawRecord], health: &Health) -> Option<BatchWritten> {
    match writer.write(batch).await {
        Ok(written) => {
            health.set("sql", true);
            Some(written)
        }
        Err(error) => {
            if matches!(error, BatchError::Sql(_)) {
                health.set("sql", false);
            }
            tracing::warn!(%error, records = batch.len(), "batch not written");
            None
        }
    }
}

/// After a batch's transaction committed: holds what it held, commits the offsets up to the
/// first held record of each partition, and marks the written entries in Redis.
async fn finish_batch(
    consumer: &GroupConsumer,
    writer: &mut BatchWriter,
    progress: &mut Progress,
    pending_offsets: &mut PendingOffsets,
    batch: &[RawRecord],
    written: BatchWritten,
    metrics: &Metrics,
) {
    after_sql_commit();
    progress.hold(written.held);
    metrics.records_held.set(progress.held_count() as i64);
    commit(consumer, pending_offsets, progress.commit_targets(batch), !batch.is_empty(), metrics);
    writer.mark_written(&written.rows).await;
}

/// After a rebalance, forgets what is known of the partitions this consumer lost: what it
/// read and held there, and offsets not yet committed (committing them now could move the
/// new owner's position back). Returns the partitions it owns when they may have changed.
fn forget_lost_partitions(
    consumer: &GroupConsumer,
    progress: &mut Progress,
    pending: &mut PendingOffsets,
    seen: &mut u64,
) -> Option<HashSet<progress::Partition>> {
    let rebalances = consumer.context().rebalances();
    if rebalances == *seen {
        return None;
    }
    match consumer.assignment() {
        Ok(assignment) => {
            let assigned: HashSet<_> = assignment.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
            progress.keep_only(&assigned);
            pending.retain(|partition, _| assigned.contains(partition));
            *seen = rebalances;
            Some(assigned)
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read the partitions assigned; asked again with the next batch");
            None
        }
    }
}

fn subscribe(consumer: &GroupConsumer, topics: &[String]) -> Result<(), KafkaError> {
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)
}

/// Fault point for the crash tests: a process killed here has written its batch to SQL but
/// not committed the offsets.
fn after_sql_commit() {
    fail::fail_point!("consumer-after-sql-commit", |_| {
        tracing::error!("fault point consumer-after-sql-commit: aborting");
        std::process::abort()
    });
}

fn owned(message: &rdkafka::message::BorrowedMessage<'_>) -> RawRecord {
    RawRecord {
        position: Position { topic: message.topic().to_owned(), partition: message.partition(), offset: message.offset() },
        payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
    }
}

/// Offsets written to SQL but not yet committed (a commit failed): committed with the next
/// batch or on the next verification tick. Until they are, the group's committed offsets lag
/// behind what is in SQL, and a drain target past them could never be reached.
type PendingOffsets = BTreeMap<(String, i32), i64>;

/// Commits a batch's offsets (`targets`) together with any still pending; on failure keeps
/// them all pending (a crash meanwhile redelivers the records, which are skipped as
/// duplicates). A target replaces what was pending for its partition: it is the latest
/// word on what is written there.
fn commit(consumer: &GroupConsumer, pending: &mut PendingOffsets, targets: BTreeMap<(String, i32), i64>, counts: bool, metrics: &Metrics) {
    pending.extend(targets);
    if commit_pending(consumer, pending, metrics) && counts {
        metrics.batches.inc();
    }
}

/// Commits the pending offsets; returns whether it succeeded (or nothing was pending).
fn commit_pending(consumer: &GroupConsumer, pending: &mut PendingOffsets, metrics: &Metrics) -> bool {
    if pending.is_empty() {
        return true;
    }
    let mut list = TopicPartitionList::new();
    for ((topic, partition), next) in pending.iter() {
        if let Err(error) = list.add_partition_offset(topic, *partition, Offset::Offset(*next)) {
            tracing::warn!(%error, "cannot build offset list");
        }
    }
    match consumer.commit(&list, CommitMode::Sync) {
        Ok(()) => {
            pending.clear();
            true
        }
        Err(error) => {
            metrics.commit_errors.inc();
            tracing::warn!(%error, "offset commit failed; retried with the next batch or in a second");
            false
        }
    }
}

//! `coupon-service consumer`: Kafka -> SQL at the pace the database can take.
//!
//! Records are written in batches, one transaction per batch, and offsets are committed only
//! after that transaction committed. A crash between the two redelivers the batch, whose rows
//! are then skipped as duplicates: every record becomes exactly one row.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::event_id::EventId;
use crate::health::Health;
use crate::kafka::{ConsumerEvents, KafkaSettings};
use crate::metrics::Metrics;
use crate::record::{validate_user_id, CouponRecord};
use crate::redis_conn::RedisHandle;
use crate::retry::Backoff;
use crate::store::{CouponRow, FailedRow, Position, Store};

/// Health components of the consumer.
pub const COMPONENTS: &[&str] = &["sql", "kafka", "redis"];

/// How the consumer batches.
#[derive(Clone, Debug)]
pub struct ConsumerSettings {
    pub topics: Vec<String>,
    pub group_id: String,
    /// Most records per SQL transaction.
    pub batch_size: usize,
    /// How long to wait for more records once one arrived.
    pub batch_linger: Duration,
    /// How long an event stays marked recovering before its state is restored from SQL:
    /// longer than the api's produce timeout, so records issued before Redis lost its data
    /// have reached the broker.
    pub recovery_settle: Duration,
    /// Partitions currently assigned to this consumer (set by the rebalance callback).
    pub assigned: Arc<AtomicUsize>,
}

/// A record taken off the topic, owned so the batch outlives the consumer's buffers.
#[derive(Clone, Debug)]
pub struct RawRecord {
    pub position: Position,
    pub payload: Vec<u8>,
}

/// Parses and checks one record; the error is the reason stored in `failed_events`.
pub fn parse_record(payload: &[u8]) -> Result<CouponRow, String> {
    let record: CouponRecord = serde_json::from_slice(payload).map_err(|e| format!("not a coupon record: {e}"))?;
    record.event.parse::<EventId>().map_err(|e| format!("bad event {:?}: {e}", record.event))?;
    validate_user_id(&record.user_id)?;
    if record.slot < 1 {
        return Err(format!("slot {} is not positive", record.slot));
    }
    Ok(CouponRow { event: record.event, user_id: record.user_id, slot: record.slot, issued_at: record.issued_at })
}

/// Sorts a batch into coupon rows and failures.
pub fn split_batch(batch: &[RawRecord]) -> (Vec<(CouponRow, Position)>, Vec<FailedRow>) {
    let mut coupons = Vec::with_capacity(batch.len());
    let mut failures = Vec::new();
    for record in batch {
        let p = &record.position;
        match parse_record(&record.payload) {
            Ok(row) => coupons.push((row, p.clone())),
            Err(reason) => failures.push(p.failed(String::from_utf8_lossy(&record.payload).into_owned(), reason)),
        }
    }
    (coupons, failures)
}

/// The offset to commit per partition: one past the highest record of the batch, failed
/// records included, so the partition keeps moving.
pub fn next_offsets(batch: &[RawRecord]) -> BTreeMap<(String, i32), i64> {
    let mut next_offsets = BTreeMap::new();
    for record in batch {
        let p = &record.position;
        let next = next_offsets.entry((p.topic.clone(), p.partition)).or_insert(p.offset + 1);
        *next = (*next).max(p.offset + 1);
    }
    next_offsets
}

/// Why a batch could not be written yet. Every variant is retried: data errors never get
/// here, they become `failed_events` rows.
#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error("SQL: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis is not connected yet")]
    RedisNotConnected,
}

/// The consumer's long-lived state.
pub struct CouponConsumer {
    store: Store,
    redis: RedisHandle,
    metrics: Arc<Metrics>,
    /// Slot rows known to exist per event, so the limit is looked up once per event.
    slot_capacity: HashMap<String, i64>,
}

impl CouponConsumer {
    pub fn new(store: Store, redis: RedisHandle, metrics: Arc<Metrics>) -> Self {
        Self { store, redis, metrics, slot_capacity: HashMap::new() }
    }

    /// Makes sure every slot in the batch has its `coupon_slots` row, using the event's limit
    /// from Redis; coupons whose slot lies beyond the limit become failures.
    async fn admit_slots(
        &mut self,
        coupons: Vec<(CouponRow, Position)>,
        failures: &mut Vec<FailedRow>,
    ) -> Result<Vec<(CouponRow, Position)>, BatchError> {
        let mut highest: HashMap<&str, i64> = HashMap::new();
        for (row, _) in &coupons {
            let h = highest.entry(row.event.as_str()).or_default();
            *h = (*h).max(row.slot);
        }
        for (event, slot) in highest {
            if self.slot_capacity.get(event).is_some_and(|cap| *cap >= slot) {
                continue;
            }
            let mut capacity = self.store.slot_capacity(event).await?;
            if capacity < slot {
                let mut conn = self.redis.get().ok_or(BatchError::RedisNotConnected)?;
                let id: EventId = event.parse().expect("validated by parse_record");
                let limit: Option<i64> = redis::cmd("HGET").arg(id.keys().config).arg("limit").query_async(&mut conn).await?;
                if let Some(limit) = limit {
                    if limit > capacity {
                        self.store.ensure_slots(event, limit).await?;
                        capacity = limit;
                    }
                }
            }
            self.slot_capacity.insert(event.to_owned(), capacity);
        }
        let mut admitted = Vec::with_capacity(coupons.len());
        for (row, position) in coupons {
            let capacity = self.slot_capacity.get(&row.event).copied().unwrap_or(0);
            if row.slot > capacity {
                let payload = serde_json::to_string(&CouponRecord {
                    event: row.event.clone(),
                    user_id: row.user_id.clone(),
                    slot: row.slot,
                    issued_at: row.issued_at,
                })
                .unwrap_or_default();
                let reason = if capacity == 0 {
                    "event has no slots: it is not provisioned".to_owned()
                } else {
                    format!("slot {} is beyond the event's limit {capacity}", row.slot)
                };
                failures.push(position.failed(payload, reason));
            } else {
                admitted.push((row, position));
            }
        }
        Ok(admitted)
    }

    /// Writes one batch to SQL (one transaction) and returns the events it touched.
    async fn write(&mut self, batch: &[RawRecord]) -> Result<Vec<String>, BatchError> {
        let started = Instant::now();
        let (coupons, mut failures) = split_batch(batch);
        let coupons = self.admit_slots(coupons, &mut failures).await?;
        let outcome = self.store.write_batch(&coupons, &failures).await?;
        for conflict in &outcome.conflicts {
            tracing::warn!(topic = %conflict.topic, partition = conflict.partition, offset = conflict.offset, reason = %conflict.reason, "record conflicts with an existing coupon");
        }
        for failure in &failures {
            tracing::warn!(topic = %failure.topic, partition = failure.partition, offset = failure.offset, reason = %failure.reason, "record sent to failed_events");
        }
        self.metrics.rows_written.inc_by(outcome.inserted);
        self.metrics.records_failed.inc_by((failures.len() + outcome.conflicts.len()) as u64);
        self.metrics.batch_seconds.observe(started.elapsed().as_secs_f64());
        let mut events: Vec<String> = coupons.into_iter().map(|(row, _)| row.event).collect();
        events.sort();
        events.dedup();
        Ok(events)
    }

    /// Publishes the row count of each event to Redis for status; best effort, since the next
    /// batch publishes it again.
    async fn publish_persisted(&self, events: &[String]) {
        let Some(mut conn) = self.redis.get() else { return };
        for event in events {
            let Ok(id) = event.parse::<EventId>() else { continue };
            match self.store.count_coupons(event).await {
                Ok(rows) => {
                    if let Err(error) = crate::gate::record_persisted(&mut conn, &id, rows).await {
                        tracing::warn!(%error, event, "cannot publish persisted count");
                    }
                }
                Err(error) => tracing::warn!(%error, event, "cannot count rows"),
            }
        }
    }
}

impl CouponConsumer {
    /// Restores events whose Redis state was lost, once their topic is drained (see
    /// `recovery`); best effort, retried on the next tick.
    async fn restore_lost_events(&mut self, consumer: Arc<StreamConsumer<ConsumerEvents>>, settle: Duration) {
        let Some(mut conn) = self.redis.get() else { return };
        match crate::recovery::restore_drained(&self.store, &mut conn, consumer, settle).await {
            Ok(restored) => {
                for (event, _) in restored {
                    // The limit may have changed with the new configuration.
                    self.slot_capacity.remove(&event.to_string());
                }
            }
            Err(error) => tracing::warn!(%error, "cannot restore lost events yet"),
        }
    }
}

/// Connects to SQL with backoff and applies migrations; returns `None` on shutdown.
pub async fn connect_store(url: &str, health: &Health, shutdown: &mut watch::Receiver<bool>) -> Option<Store> {
    let shown = crate::redis_conn::redact_url(url);
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
    kafka: KafkaSettings,
    database_url: String,
    redis: RedisHandle,
    health: Health,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let consumer = Arc::new(kafka.consumer(&settings.group_id, settings.assigned.clone())?);
    {
        let probe_consumer = consumer.clone();
        health.spawn_probe("kafka", Duration::from_secs(2), move || {
            let c = probe_consumer.clone();
            async move { tokio::task::spawn_blocking(move || c.fetch_metadata(None, Duration::from_secs(2)).is_ok()).await.unwrap_or(false) }
        });
        let probe_redis = redis.clone();
        health.spawn_probe("redis", Duration::from_secs(2), move || {
            let r = probe_redis.clone();
            async move {
                match r.get() {
                    Some(mut conn) => redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok(),
                    None => false,
                }
            }
        });
    }
    let Some(store) = connect_store(&database_url, &health, &mut shutdown).await else { return Ok(()) };
    {
        let probe_store = store.clone();
        health.spawn_probe("sql", Duration::from_secs(2), move || {
            let s = probe_store.clone();
            async move { s.ping().await.is_ok() }
        });
    }
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    tracing::info!(topics = ?settings.topics, group = %settings.group_id, "consuming");
    let mut worker = CouponConsumer::new(store, redis, metrics.clone());
    let mut recovery_tick = tokio::time::interval(Duration::from_secs(1));
    recovery_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

    loop {
        let first = tokio::select! {
            message = consumer.recv() => message,
            _ = recovery_tick.tick() => {
                worker.restore_lost_events(consumer.clone(), settings.recovery_settle).await;
                continue;
            }
            _ = shutdown.changed() => break,
        };
        let mut batch = Vec::with_capacity(settings.batch_size);
        match first {
            Ok(message) => batch.push(owned(&message)),
            Err(error) => {
                tracing::warn!(%error, "Kafka consume error");
                continue;
            }
        }
        let deadline = tokio::time::Instant::now() + settings.batch_linger;
        while batch.len() < settings.batch_size {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(message)) => batch.push(owned(&message)),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "Kafka consume error");
                    break;
                }
                Err(_) => break,
            }
        }

        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let events = loop {
            match worker.write(&batch).await {
                Ok(events) => {
                    health.set("sql", true);
                    break events;
                }
                Err(error) => {
                    if matches!(error, BatchError::Sql(_)) {
                        health.set("sql", false);
                    }
                    let wait = backoff.next_delay();
                    tracing::warn!(%error, records = batch.len(), retry_in = ?wait, "batch not written; offsets stay uncommitted");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        // Stopping here leaves the batch uncommitted: it is redelivered.
                        _ = shutdown.changed() => return Ok(()),
                    }
                }
            }
        };
        after_sql_commit();
        commit(&consumer, &batch, &metrics);
        worker.publish_persisted(&events).await;
    }
    tracing::info!("consumer stopped");
    Ok(())
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

fn commit(consumer: &StreamConsumer<ConsumerEvents>, batch: &[RawRecord], metrics: &Metrics) {
    let mut list = TopicPartitionList::new();
    for ((topic, partition), next) in next_offsets(batch) {
        if let Err(error) = list.add_partition_offset(&topic, partition, Offset::Offset(next)) {
            tracing::warn!(%error, "cannot build offset list");
        }
    }
    match consumer.commit(&list, CommitMode::Sync) {
        Ok(()) => {
            metrics.batches.inc();
        }
        Err(error) => {
            metrics.commit_errors.inc();
            tracing::warn!(%error, "offset commit failed; the batch will be redelivered and skipped as duplicates");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(partition: i32, offset: i64, payload: &str) -> RawRecord {
        RawRecord { position: Position { topic: "t".into(), partition, offset }, payload: payload.as_bytes().to_vec() }
    }

    #[test]
    fn good_and_bad_records_are_split_and_offsets_advance_past_both() {
        let good = r#"{"event":"shop/sale","userId":"u1","slot":3,"issuedAt":"2026-11-27T10:00:00Z"}"#;
        let batch = [
            raw(0, 5, good),
            raw(0, 6, "not json"),
            raw(1, 9, r#"{"event":"shop/sale","userId":"","slot":1,"issuedAt":"2026-11-27T10:00:00Z"}"#),
        ];
        let (coupons, failures) = split_batch(&batch);
        let next = next_offsets(&batch);
        assert_eq!(coupons.len(), 1);
        assert_eq!(coupons[0].0.slot, 3);
        assert_eq!(failures.len(), 2);
        assert!(failures[0].reason.contains("not a coupon record"), "{}", failures[0].reason);
        assert!(failures[1].reason.contains("userId"), "{}", failures[1].reason);
        assert_eq!(next.get(&("t".to_owned(), 0)), Some(&7));
        assert_eq!(next.get(&("t".to_owned(), 1)), Some(&10));
    }

    #[test]
    fn records_with_bad_fields_are_refused() {
        assert!(parse_record(br#"{"event":"nope","userId":"u","slot":1,"issuedAt":"2026-11-27T10:00:00Z"}"#).is_err());
        assert!(parse_record(br#"{"event":"a/b","userId":"u","slot":0,"issuedAt":"2026-11-27T10:00:00Z"}"#).is_err());
        assert!(parse_record(br#"{"event":"a/b","userId":"u","slot":1}"#).is_err());
        assert!(parse_record(br#"{"event":"a/b","userId":"u","slot":1,"issuedAt":"2026-11-27T10:00:00Z"}"#).is_ok());
    }
}

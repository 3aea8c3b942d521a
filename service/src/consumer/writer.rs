//! Writing one batch: slot rows for the events it touches, coupons and failures in one SQL
//! transaction, then the persisted counts published to Redis.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coupon_core::event::{CouponRecord, EventId};
use coupon_core::redis::keyspace;
use coupon_core::redis::{RedisError, RedisHandle};

use super::batch::{split_batch, RawRecord};
use super::kafka::GroupConsumer;
use super::recovery;
use crate::metrics::Metrics;
use crate::sql::{CouponRow, FailedRow, Position, Store};

/// Why a batch could not be written yet. Every variant is retried: data errors never get
/// here, they become `failed_events` rows.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("SQL: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("Redis: {0}")]
    Redis(#[from] RedisError),
    #[error("Redis is not connected yet")]
    RedisNotConnected,
}

/// The consumer's long-lived state.
pub struct BatchWriter {
    store: Store,
    redis: RedisHandle,
    metrics: Arc<Metrics>,
    /// Slot rows known to exist per event, so the limit is looked up once per event.
    slot_capacity: HashMap<String, i64>,
}

impl BatchWriter {
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
                if let Some(limit) = keyspace::limit(&mut conn, &id).await? {
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
    pub async fn write(&mut self, batch: &[RawRecord]) -> Result<Vec<String>, BatchError> {
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
    pub async fn publish_persisted(&self, events: &[String]) {
        let Some(mut conn) = self.redis.get() else { return };
        for event in events {
            let Ok(id) = event.parse::<EventId>() else { continue };
            match self.store.count_coupons(event).await {
                Ok(rows) => {
                    if let Err(error) = keyspace::raise_persisted(&mut conn, &id, rows).await {
                        tracing::warn!(%error, event, "cannot publish persisted count");
                    }
                }
                Err(error) => tracing::warn!(%error, event, "cannot count rows"),
            }
        }
    }

    /// Restores events whose Redis state was lost, once their topic is drained (see
    /// `recovery`); best effort, retried on the next tick.
    pub async fn restore_lost_events(&mut self, consumer: Arc<GroupConsumer>, settle: Duration) {
        let Some(mut conn) = self.redis.get() else { return };
        match recovery::restore_drained(&self.store, &mut conn, consumer, settle).await {
            Ok(restored) => {
                for event in restored {
                    // The limit may have changed with the new configuration.
                    self.slot_capacity.remove(&event.to_string());
                }
            }
            Err(error) => tracing::warn!(%error, "cannot restore lost events yet"),
        }
    }
}

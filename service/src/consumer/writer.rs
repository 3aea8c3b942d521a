//! Writing one batch: slot rows for the events it touches, coupons and failures in one SQL
//! transaction, then the written entries marked in Redis.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coupon_core::event::{EventId, EventKey};
use coupon_core::redis::keyspace::{self, EventLayout, EventPresence};
use coupon_core::redis::{RedisError, RedisHandle};

use super::batch::{split_batch, RawRecord};
use crate::metrics::Metrics;
use crate::sql::{CouponRow, FailedRow, Position, Store};

/// Slot rows are added in steps of this many, as records need them: the first record of
/// an event of a million coupons costs one step, not a million rows.
const SLOT_STEP: i64 = 10_000;

/// Entries marked written per Redis call.
const MARK_CHUNK: usize = 500;

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
    #[error("event {0} has no configuration in Redis (yet); holding its records")]
    EventMissing(String),
}

/// The consumer's long-lived state.
pub struct BatchWriter {
    store: Store,
    redis: RedisHandle,
    metrics: Arc<Metrics>,
    /// Slot rows known to exist per event, so Redis and SQL are asked once per step.
    slot_capacity: HashMap<String, i64>,
    /// Events whose configuration was missing from Redis, since when: their records are
    /// held (the operator may be writing it back) for `missing_event_patience`, then failed.
    missing_since: HashMap<String, Instant>,
    missing_event_patience: Duration,
    /// With `EVENT_NAMESPACE`: the namespace whose events this consumer writes. Records of
    /// other namespaces' events on a shared topic belong to their own consumers (another
    /// release, its own group and database): they are passed over, neither written nor failed.
    served_namespace: Option<String>,
}

impl BatchWriter {
    pub fn new(
        store: Store,
        redis: RedisHandle,
        metrics: Arc<Metrics>,
        missing_event_patience: Duration,
        served_namespace: Option<String>,
    ) -> Self {
        Self {
            store,
            redis,
            metrics,
            slot_capacity: HashMap::new(),
            missing_since: HashMap::new(),
            missing_event_patience,
            served_namespace,
        }
    }

    /// Whether a record's payload, however malformed otherwise, names the event of a
    /// namespace this consumer does not serve.
    fn names_another_namespace(&self, payload: &[u8]) -> bool {
        let Some(served) = self.served_namespace.as_deref() else { return false };
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(payload) else { return false };
        value["event"].as_str().and_then(|event| event.split_once('/')).is_some_and(|(namespace, _)| namespace != served)
    }

    /// Whether this consumer writes (and verifies) the event: all events, or with
    /// `EVENT_NAMESPACE` those of that namespace.
    pub fn serves(&self, event: &EventId) -> bool {
        self.served_namespace.as_deref().is_none_or(|namespace| event.namespace() == namespace)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Forgets what is cached about an event (its limit may have changed).
    pub fn forget(&mut self, event: &EventId) {
        self.slot_capacity.retain(|key, _| key.parse::<EventKey>().map_or(true, |k| k.id() != event));
    }

    /// Makes sure every slot in the batch has its `coupon_slots` row, in steps, using the
    /// event's limit from Redis; coupons of a deleted event, or whose slot lies beyond the
    /// limit, become failures.
    async fn admit_slots(
        &mut self,
        coupons: Vec<(CouponRow, Position)>,
        failures: &mut Vec<FailedRow>,
    ) -> Result<Vec<(CouponRow, Position)>, BatchError> {
        let mut highest: HashMap<String, i64> = HashMap::new();
        for (row, _) in &coupons {
            let h = highest.entry(row.event.clone()).or_default();
            *h = (*h).max(row.slot);
        }
        let mut refused: HashMap<String, String> = HashMap::new();
        for (event, slot) in highest {
            if self.slot_capacity.get(&event).is_some_and(|cap| *cap >= slot) {
                continue;
            }
            let mut capacity = self.store.slot_capacity(&event).await?;
            if capacity < slot {
                let mut conn = self.redis.get().ok_or(BatchError::RedisNotConnected)?;
                let key: EventKey = event.parse().expect("validated by parse_record");
                match keyspace::presence(&mut conn, key.id()).await? {
                    EventPresence::Provisioned { incarnation, .. } if incarnation.as_deref() != key.incarnation() => {
                        // Another object of the same name lives in Redis now: this record is
                        // of an earlier one that was deleted (`onDelete: Delete` fails its
                        // unwritten records like a deletion does; `Retain` drains before the
                        // name is provisioned again).
                        refused.insert(event.clone(), "the event was deleted and its name re-used".to_owned());
                    }
                    EventPresence::Provisioned { limit, .. } => {
                        self.missing_since.remove(&event);
                        let wanted = round_up(slot, SLOT_STEP).min(limit);
                        if wanted > capacity {
                            self.store.ensure_slots(&event, wanted).await?;
                            capacity = wanted;
                        }
                        if slot > limit {
                            refused.insert(event.clone(), format!("beyond the event's limit {limit}"));
                        }
                    }
                    EventPresence::Deleted => {
                        refused.insert(event.clone(), "the event was deleted".to_owned());
                    }
                    EventPresence::Missing => {
                        // An event with slot rows existed: Redis lost its configuration and the
                        // operator will write it back, so its records (201s) wait twelve times
                        // longer than those of an event SQL never saw; both are failed in the
                        // end, so a deleted event whose tombstone expired cannot hold the
                        // consumer for ever.
                        let since = *self.missing_since.entry(event.clone()).or_insert_with(Instant::now);
                        let patience = if capacity > 0 { self.missing_event_patience * 12 } else { self.missing_event_patience };
                        if since.elapsed() < patience {
                            return Err(BatchError::EventMissing(event));
                        }
                        refused.insert(event.clone(), format!("the event is not provisioned (waited {:?})", since.elapsed()));
                    }
                }
            }
            self.slot_capacity.insert(event, capacity);
        }
        let mut admitted = Vec::with_capacity(coupons.len());
        for (row, position) in coupons {
            let capacity = self.slot_capacity.get(&row.event).copied().unwrap_or(0);
            if row.slot > capacity {
                let why = refused.get(&row.event).map_or("beyond the event's slots", String::as_str);
                let payload = serde_json::to_vec(&coupon_core::event::CouponRecord {
                    event: row.event.clone(),
                    user_id: row.user_id.clone(),
                    slot: row.slot,
                    issued_at: row.issued_at,
                })
                .unwrap_or_default();
                failures.push(position.failed(payload, format!("slot {}: {why}", row.slot)));
            } else {
                admitted.push((row, position));
            }
        }
        Ok(admitted)
    }

    /// An api of the version before event keys carried the incarnation produces records
    /// named `<namespace>/<name>` for an event that has one (during a rolling upgrade): those
    /// whose user holds that slot in the current incarnation are its coupons (that api read
    /// the current configuration), so they get its key. Two Redis reads per such record;
    /// none once every api is upgraded.
    async fn key_records_of_older_apis(&self, coupons: &mut [(CouponRow, Position)]) -> Result<(), BatchError> {
        let mut keys: HashMap<String, Option<(String, EventLayout)>> = HashMap::new();
        for (row, _) in coupons.iter_mut() {
            if row.event.contains('@') {
                continue;
            }
            if !keys.contains_key(&row.event) {
                let mut conn = self.redis.get().ok_or(BatchError::RedisNotConnected)?;
                let id: EventId = row.event.parse().expect("validated by parse_record");
                let key = match keyspace::presence(&mut conn, &id).await? {
                    EventPresence::Provisioned { incarnation: Some(incarnation), .. } => {
                        let layout = keyspace::layout(&mut conn, &id).await?.unwrap_or_else(|| EventLayout::single(&id));
                        EventKey::new(id, Some(&incarnation)).ok().map(|k| (k.to_string(), layout))
                    }
                    _ => None,
                };
                keys.insert(row.event.clone(), key);
            }
            let Some(Some((key, layout))) = keys.get(&row.event) else { continue };
            // Only a coupon the current incarnation holds: a late record of an earlier
            // object of the same name keeps its name-only key (and is refused as such).
            let mut conn = self.redis.get().ok_or(BatchError::RedisNotConnected)?;
            if keyspace::holdings(&mut conn, layout, &row.user_id).await?.iter().any(|h| h.slot == row.slot) {
                row.event = key.clone();
            }
        }
        Ok(())
    }

    /// Writes one batch to SQL (one transaction, or record by record if the database
    /// refuses some) and returns the coupons whose rows now exist.
    pub async fn write(&mut self, batch: &[RawRecord]) -> Result<Vec<CouponRow>, BatchError> {
        let started = Instant::now();
        let (mut coupons, mut failures) = split_batch(batch);
        let before = coupons.len() + failures.len();
        coupons.retain(|(row, _)| row.event.parse::<EventKey>().is_ok_and(|key| self.serves(key.id())));
        // A malformed record that still names another namespace's event is that tenant's
        // to file, not this one's.
        failures.retain(|failure| !self.names_another_namespace(&failure.payload));
        self.metrics.records_skipped.inc_by((before - coupons.len() - failures.len()) as u64);
        self.key_records_of_older_apis(&mut coupons).await?;
        let coupons = self.admit_slots(coupons, &mut failures).await?;
        let outcome = self.store.write_batch(&coupons, &failures).await?;
        for conflict in &outcome.conflicts {
            tracing::warn!(topic = %conflict.topic, partition = conflict.partition, offset = conflict.offset, reason = %conflict.reason, "record not written: sent to failed_events");
        }
        for failure in &failures {
            tracing::warn!(topic = %failure.topic, partition = failure.partition, offset = failure.offset, reason = %failure.reason, "record sent to failed_events");
        }
        self.metrics.rows_written.inc_by(outcome.inserted);
        self.metrics.records_failed.inc_by((failures.len() + outcome.conflicts.len()) as u64);
        self.metrics.batch_seconds.observe(started.elapsed().as_secs_f64());
        Ok(outcome.written)
    }

    /// Marks the entries of the rows written in Redis (which counts `persisted`); best
    /// effort: an entry left unmarked is marked by healing once its deadline passed.
    pub async fn mark_written(&self, written: &[CouponRow]) {
        let Some(mut conn) = self.redis.get() else { return };
        let mut by_event: HashMap<&str, Vec<(&str, i64)>> = HashMap::new();
        for row in written {
            by_event.entry(row.event.as_str()).or_default().push((row.user_id.as_str(), row.slot));
        }
        for (event, rows) in by_event {
            let Ok(key) = event.parse::<EventKey>() else { continue };
            let layout = match keyspace::layout(&mut conn, key.id()).await {
                Ok(Some(layout)) => layout,
                Ok(None) => continue,
                Err(error) => {
                    tracing::warn!(%error, event, "cannot mark written entries; healing will");
                    continue;
                }
            };
            for chunk in rows.chunks(MARK_CHUNK) {
                if let Err(error) = keyspace::mark_written(&mut conn, &key, &layout, chunk).await {
                    tracing::warn!(%error, event, "cannot mark written entries; healing will");
                }
            }
        }
    }
}

fn round_up(value: i64, step: i64) -> i64 {
    (value + step - 1) / step * step
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_rows_grow_in_steps() {
        assert_eq!(round_up(1, SLOT_STEP), SLOT_STEP);
        assert_eq!(round_up(SLOT_STEP, SLOT_STEP), SLOT_STEP);
        assert_eq!(round_up(SLOT_STEP + 1, SLOT_STEP), 2 * SLOT_STEP);
    }
}

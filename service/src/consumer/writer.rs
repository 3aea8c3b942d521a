//! Writing one batch: slot rows for the events it touches, coupons and failures in one SQL
//! transaction, then the written entries marked in Redis.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coupon_core::event::{EventId, EventKey, RecordKeys};
use coupon_core::redis::keyspace::{self, EventLayout, EventPresence};
use coupon_core::redis::{RedisConnection, RedisError, RedisHandle};

use super::batch::{split_batch, RawRecord, Signatures, SplitBatch};
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
}

/// What writing a batch did.
#[derive(Debug, Default)]
pub struct BatchWritten {
    /// The coupons whose rows now exist.
    pub rows: Vec<CouponRow>,
    /// Records of events whose configuration is missing from Redis: neither written nor
    /// failed, to be tried again (`Progress`).
    pub held: Vec<RawRecord>,
}

/// The coupons of a batch that may be written, and the positions of those held.
struct Admitted {
    coupons: Vec<(CouponRow, Position)>,
    held: HashSet<Position>,
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
    /// Each event's layout as last read, for the check of every record (`strays`): read again
    /// when Redis says it is another, or cannot tell.
    layouts: HashMap<EventId, EventLayout>,
    /// With `EVENT_NAMESPACE`: the namespace whose events this consumer writes. Records of
    /// other namespaces' events on a shared topic belong to their own consumers (another
    /// release, its own group and database): they are passed over, neither written nor failed.
    served_namespace: Option<String>,
    /// With keys, records are signed by the apis: a valid signature vouches for a record
    /// Redis cannot (`strays`).
    record_keys: Option<Arc<RecordKeys>>,
    /// Every api signs (`RECORD_SIGNATURES_REQUIRED`): while Redis cannot tell, a record no
    /// valid signature vouches for is refused.
    signatures_required: bool,
}

/// Why a coupon of the batch is refused before SQL, by position.
type Refusals = HashMap<Position, String>;

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
            layouts: HashMap::new(),
            missing_since: HashMap::new(),
            missing_event_patience,
            served_namespace,
            record_keys: None,
            signatures_required: false,
        }
    }

    /// Verifies records' signatures with these keys (`RECORD_KEYS_FILE`) and, when
    /// `required`, refuses while Redis cannot tell a record none vouches for.
    pub fn with_record_keys(mut self, keys: Option<Arc<RecordKeys>>, required: bool) -> Self {
        self.signatures_required = required && keys.is_some();
        self.record_keys = keys;
        self
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
        self.layouts.remove(event);
    }

    /// Makes sure every slot in the batch has its `coupon_slots` row, in steps, using the
    /// event's limit from Redis; coupons of a deleted event, or whose slot lies beyond the
    /// limit, become failures; coupons of an event whose configuration is missing are held.
    async fn admit_slots(
        &mut self,
        coupons: Vec<(CouponRow, Position)>,
        signatures: &Signatures,
        failures: &mut Vec<FailedRow>,
    ) -> Result<Admitted, BatchError> {
        let mut highest: HashMap<String, i64> = HashMap::new();
        for (row, _) in &coupons {
            let h = highest.entry(row.event.clone()).or_default();
            *h = (*h).max(row.slot);
        }
        let mut refused: HashMap<String, String> = HashMap::new();
        let mut held_events: HashSet<String> = HashSet::new();
        let strays = self.strays(&coupons, signatures, &mut held_events).await?;
        for (event, slot) in highest {
            if held_events.contains(&event) || self.slot_capacity.get(&event).is_some_and(|cap| *cap >= slot) {
                continue;
            }
            let mut capacity = self.store.slot_capacity(&event).await?;
            if capacity < slot {
                let mut conn = self.redis.get().ok_or(BatchError::RedisNotConnected)?;
                let key: EventKey = event.parse().expect("validated by parse_record");
                let beyond: Vec<&(CouponRow, Position)> =
                    coupons.iter().filter(|(row, _)| row.event == event && row.slot > capacity).collect();
                match judge(&mut conn, &key, &beyond, &strays).await {
                    // One event's trouble with Redis (its master stalled or failing over)
                    // holds that event's records only.
                    Err(error) => {
                        tracing::warn!(%error, event, "cannot read the event's state in Redis; holding its records");
                        held_events.insert(event);
                        continue;
                    }
                    Ok(Verdict::Refuse(reason)) => {
                        refused.insert(event.clone(), reason);
                    }
                    Ok(Verdict::Grow { limit, highest_issued }) => {
                        self.missing_since.remove(&event);
                        let wanted = round_up(highest_issued, SLOT_STEP).min(limit);
                        if wanted > capacity {
                            self.store.ensure_slots(&event, wanted).await?;
                            capacity = wanted;
                        }
                        if highest_issued > limit {
                            refused.insert(event.clone(), format!("beyond the event's limit {limit}"));
                        }
                    }
                    Ok(Verdict::Missing) => {
                        // An event with slot rows existed: Redis lost its configuration and the
                        // operator will write it back, so its records (201s) wait twelve times
                        // longer than those of an event SQL never saw; both are failed in the
                        // end, so a deleted event whose tombstone expired cannot be held for
                        // ever. Only this event's records wait: the rest of the batch goes on.
                        let since = *self.missing_since.entry(event.clone()).or_insert_with(|| {
                            tracing::warn!(event, "the event has no configuration in Redis (yet); holding its records");
                            Instant::now()
                        });
                        let patience = if capacity > 0 { self.missing_event_patience * 12 } else { self.missing_event_patience };
                        if since.elapsed() < patience {
                            held_events.insert(event);
                            continue;
                        }
                        refused.insert(event.clone(), format!("the event is not provisioned (waited {:?})", since.elapsed()));
                    }
                }
            }
            self.slot_capacity.insert(event, capacity);
        }
        let mut admitted = Vec::with_capacity(coupons.len());
        let mut held = HashSet::new();
        for (row, position) in coupons {
            if held_events.contains(&row.event) {
                held.insert(position);
                continue;
            }
            if let Some(why) = strays.get(&position) {
                failures.push(position.failed(row.payload(), why.clone()));
                continue;
            }
            let capacity = self.slot_capacity.get(&row.event).copied().unwrap_or(0);
            if row.slot > capacity {
                let why = refused.get(&row.event).map_or("beyond the event's slots", String::as_str);
                failures.push(position.failed(row.payload(), format!("slot {}: {why}", row.slot)));
            } else {
                admitted.push((row, position));
            }
        }
        Ok(Admitted { coupons: admitted, held })
    }

    /// The coupons of the batch no gate issued, and why. Where Redis can tell, it decides,
    /// signed or not: a coupon whose user does not hold its slot is refused (a slot healing
    /// gave to someone else after its record was overdue is theirs, not a late record's).
    /// Every coupon is checked, not only those beyond the slot rows: a well-formed record for
    /// a slot its user was never issued (produced by whoever can write to the topic) would
    /// take that slot's row from its holder, and a restore from SQL would make it permanent.
    /// One read-only script per home shard, per event and batch, with the layout this
    /// consumer keeps. An event Redis cannot answer for (a stalled master) is held
    /// (`held_events`). Where Redis cannot tell (the event recovering, its configuration
    /// missing, another incarnation's records), a coupon is judged against the limit, unless
    /// signatures are required: then one no valid signature vouches for is refused.
    async fn strays(
        &mut self,
        coupons: &[(CouponRow, Position)],
        signatures: &Signatures,
        held_events: &mut HashSet<String>,
    ) -> Result<Refusals, BatchError> {
        let mut by_event: HashMap<&str, Vec<&(CouponRow, Position)>> = HashMap::new();
        for coupon in coupons {
            by_event.entry(coupon.0.event.as_str()).or_default().push(coupon);
        }
        let mut strays = Refusals::new();
        for (event, rows) in by_event {
            let mut conn = self.redis.get().ok_or(BatchError::RedisNotConnected)?;
            let key: EventKey = event.parse().expect("validated by parse_record");
            match self.unissued(&mut conn, &key, &rows).await {
                Ok(Some(not_held)) => strays
                    .extend(not_held.into_iter().map(|(position, slot)| (position, format!("slot {slot} was not issued to this user")))),
                Ok(None) if self.signatures_required => strays.extend(rows.iter().filter_map(|(_, position)| {
                    let why = signatures.not_vouched(position)?;
                    Some((position.clone(), format!("{why}, while Redis cannot tell whether a gate issued it")))
                })),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, event, "cannot read the event's state in Redis; holding its records");
                    held_events.insert(event.to_owned());
                }
            }
        }
        Ok(strays)
    }

    /// The coupons (all of one event) whose user does not hold their slot in Redis, with
    /// that slot; `None` while Redis cannot tell (recovering, another incarnation, or no
    /// configuration at all: its records are then held or refused by `judge` beyond the slot
    /// rows).
    async fn unissued(
        &mut self,
        conn: &mut RedisConnection,
        key: &EventKey,
        coupons: &[&(CouponRow, Position)],
    ) -> Result<Option<Vec<(Position, i64)>>, RedisError> {
        let asked: Vec<(&str, i64)> = coupons.iter().map(|(row, _)| (row.user_id.as_str(), row.slot)).collect();
        for read_again in [false, true] {
            let layout = match self.layouts.get(key.id()) {
                Some(layout) if !read_again => layout.clone(),
                _ => {
                    let Some(layout) = keyspace::layout(conn, key.id()).await? else { return Ok(None) };
                    self.layouts.insert(key.id().clone(), layout.clone());
                    layout
                }
            };
            match keyspace::issued_to(conn, key, &layout, &asked).await? {
                keyspace::Issued::Held(held) => {
                    let not_held = coupons.iter().zip(held).filter(|(_, held)| !held);
                    return Ok(Some(not_held.map(|((row, position), _)| (position.clone(), row.slot)).collect()));
                }
                keyspace::Issued::CannotTell => {
                    self.layouts.remove(key.id());
                    return Ok(None);
                }
                keyspace::Issued::OtherLayout => continue,
            }
        }
        Ok(None)
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
    /// refuses some): returns the coupons whose rows now exist and the records held.
    pub async fn write(&mut self, batch: &[RawRecord]) -> Result<BatchWritten, BatchError> {
        let started = Instant::now();
        let SplitBatch { mut coupons, mut failures, signatures } = split_batch(batch, self.record_keys.as_deref());
        let before = coupons.len() + failures.len();
        coupons.retain(|(row, _)| row.event.parse::<EventKey>().is_ok_and(|key| self.serves(key.id())));
        // A malformed record that still names another namespace's event is that tenant's
        // to file, not this one's.
        failures.retain(|failure| !self.names_another_namespace(&failure.payload));
        self.metrics.records_skipped.inc_by((before - coupons.len() - failures.len()) as u64);
        self.key_records_of_older_apis(&mut coupons).await?;
        let Admitted { coupons, held } = self.admit_slots(coupons, &signatures, &mut failures).await?;
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
        let held = if held.is_empty() { Vec::new() } else { batch.iter().filter(|r| held.contains(&r.position)).cloned().collect() };
        Ok(BatchWritten { rows: outcome.written, held })
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

/// What Redis says of one event's coupons that lie beyond its slot rows.
enum Verdict {
    /// None of them may be written, for this reason.
    Refuse(String),
    /// Slot rows may grow up to the highest slot issued (bounded by `limit`, the largest of
    /// the shards'), strays (`BatchWriter::strays`) aside.
    Grow { limit: i64, highest_issued: i64 },
    /// No configuration: Redis lost it (the operator writes it back), or not provisioned yet.
    Missing,
}

/// Judges an event's coupons beyond its slot rows (`beyond`, all of `key`'s event; `strays`:
/// the batch's coupons no gate issued).
async fn judge(
    conn: &mut RedisConnection,
    key: &EventKey,
    beyond: &[&(CouponRow, Position)],
    strays: &Refusals,
) -> Result<Verdict, RedisError> {
    Ok(match keyspace::presence(conn, key.id()).await? {
        // Another object of the same name lives in Redis now: these records are of an earlier
        // one that was deleted (`onDelete: Delete` fails its unwritten records like a deletion
        // does; `Retain` drains before the name is provisioned again).
        EventPresence::Provisioned { incarnation, .. } if incarnation.as_deref() != key.incarnation() => {
            Verdict::Refuse("the event was deleted and its name re-used".to_owned())
        }
        EventPresence::Provisioned { limit, .. } => {
            let highest_issued =
                beyond.iter().filter(|(_, position)| !strays.contains_key(position)).map(|(row, _)| row.slot).max().unwrap_or(0);
            Verdict::Grow { limit, highest_issued }
        }
        EventPresence::Deleted => Verdict::Refuse("the event was deleted".to_owned()),
        EventPresence::Missing => Verdict::Missing,
    })
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

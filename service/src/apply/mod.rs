//! The apply decision: validate, ask the gate, produce the record, give the slot back when
//! the record was certainly not written. HTTP lives in `crate::http`; this module answers
//! with an `ApplyOutcome`.

mod caches;
mod outcome;
pub mod producer;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use coupon_core::event::{validate_user_id, CouponRecord, EventId};
use coupon_core::redis::keyspace::{self, GateDecision};
use coupon_core::redis::RedisHandle;
use coupon_core::retry::Backoff;

pub use caches::{KnownEvents, SoldOutCache};
pub use outcome::ApplyOutcome;
use producer::{Delivery, ProducerSlot};

use crate::health::Health;
use crate::metrics::Metrics;

/// Health components of the api.
pub const COMPONENTS: &[&str] = &["redis", "kafka"];

/// Decides applies for the events of one namespace.
pub struct ApplyService {
    namespace: String,
    redis: RedisHandle,
    producer: ProducerSlot,
    health: Health,
    metrics: Arc<Metrics>,
    sold_out: SoldOutCache,
    known: KnownEvents,
}

impl ApplyService {
    pub fn new(
        namespace: String,
        redis: RedisHandle,
        producer: ProducerSlot,
        health: Health,
        metrics: Arc<Metrics>,
        sold_out_recheck: Duration,
    ) -> Self {
        Self { namespace, redis, producer, health, metrics, sold_out: SoldOutCache::new(sold_out_recheck), known: KnownEvents::default() }
    }

    pub fn producer(&self) -> &ProducerSlot {
        &self.producer
    }

    /// The event `name` of this api's namespace.
    pub fn event_id(&self, name: &str) -> Result<EventId, ApplyOutcome> {
        EventId::new(&self.namespace, name).map_err(ApplyOutcome::bad_request)
    }

    /// Decides one apply of `user_id` to `event` (from `event_id`).
    pub async fn apply(self: &Arc<Self>, event: EventId, user_id: String) -> ApplyOutcome {
        let name = event.name();
        if let Err(error) = validate_user_id(&user_id) {
            return ApplyOutcome::bad_request(error);
        }
        if self.sold_out.is_sold_out(name) {
            return ApplyOutcome::SoldOut;
        }
        let Some(mut conn) = self.redis.get() else { return ApplyOutcome::Unavailable };
        if !self.health.is_ready("kafka") {
            // Nothing is counted while the broker is known to be down.
            return ApplyOutcome::Unavailable;
        }
        let decision = match keyspace::apply(&mut conn, &event, &user_id).await {
            Ok(decision) => decision,
            Err(error) => {
                tracing::warn!(%error, "gate script failed");
                return ApplyOutcome::Unavailable;
            }
        };
        if decision == GateDecision::UnknownEvent {
            return if self.known.contains(name) { ApplyOutcome::Unavailable } else { ApplyOutcome::UnknownEvent };
        }
        self.known.insert(name);
        match decision {
            GateDecision::Issued { slot, topic } => {
                self.sold_out.set(name, false);
                // The produce and, on failure, the release run to completion even if the
                // client goes away, so no slot is left held by a request nobody waits for.
                let task = tokio::spawn(self.clone().deliver(event.clone(), user_id, slot, topic));
                match task.await {
                    Ok(true) => ApplyOutcome::Issued { slot },
                    _ => ApplyOutcome::Unavailable,
                }
            }
            GateDecision::Duplicate => ApplyOutcome::Duplicate,
            GateDecision::SoldOut => {
                self.sold_out.set(name, true);
                ApplyOutcome::SoldOut
            }
            GateDecision::NotOpen => ApplyOutcome::NotOpen,
            GateDecision::Closed => ApplyOutcome::Closed,
            GateDecision::UnknownEvent | GateDecision::Recovering => ApplyOutcome::Unavailable,
        }
    }

    /// Produces the record and waits for the broker's acknowledgement; on failure gives the
    /// slot and the user's mark back. Returns whether the record was acknowledged.
    async fn deliver(self: Arc<Self>, event: EventId, user_id: String, slot: i64, topic: String) -> bool {
        let record = CouponRecord { event: event.to_string(), user_id, slot, issued_at: Utc::now() };
        let payload = serde_json::to_vec(&record).expect("record serializes");
        let (generation, producer) = self.producer.current();
        let error = match producer.send(&topic, &record.user_id, &payload).await {
            Delivery::Acked => return true,
            Delivery::NotPersisted(error) => error,
            Delivery::PossiblyPersisted(error) => {
                // The broker may hold the record: its slot must not go to anyone else. The
                // user keeps the mark (a retry answers 409); if the record is on the topic,
                // the coupon is theirs.
                self.producer.replace_if_broken(generation, &producer, &error, self.health.is_ready("kafka"));
                self.metrics.undecided_produces.inc();
                tracing::warn!(%error, event = %event, slot, user = %record.user_id, "produce timed out after sending; the record may be written, so the slot stays taken");
                return false;
            }
        };
        self.producer.replace_if_broken(generation, &producer, &error, self.health.is_ready("kafka"));
        tracing::warn!(%error, event = %event, slot, "produce failed; releasing the slot");
        self.metrics.released_slots.inc();
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        for _ in 0..20 {
            if let Some(mut conn) = self.redis.get() {
                match keyspace::release(&mut conn, &event, &record.user_id, slot).await {
                    Ok(_) => return false,
                    Err(error) => tracing::warn!(%error, event = %event, slot, "release failed, retrying"),
                }
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
        tracing::error!(event = %event, slot, user = %record.user_id, "could not release slot: it stays counted without a coupon");
        false
    }
}

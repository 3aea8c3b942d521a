//! The delivery path: after the gate issued a slot, the replicas' acknowledgement of it
//! (optional), the record produced and acknowledged, and the slot given back when the record
//! was certainly not written.

use std::sync::Arc;
use std::time::Duration;

use coupon_core::event::{CouponRecord, EventKey};
use coupon_core::redis::keyspace::{self, EventLayout};
use coupon_core::redis::{RedisConnection, RedisError, RedisHandle};
use coupon_core::retry::Backoff;

use super::producer::Delivery;
use super::ApplyService;

impl ApplyService {
    /// With `ReplicaWait`, whether enough replicas hold the gate's write. If not, nothing is
    /// produced: the entry stays pending and the user's retry after the lease delivers it.
    pub(super) async fn replicated(&self, conn: &mut RedisConnection, layout: &EventLayout, user_id: &str) -> bool {
        let Some(wait) = self.replica_wait else { return true };
        match keyspace::wait_for_replicas(conn, layout, user_id, wait.replicas, wait.timeout).await {
            Ok(acked) if acked >= i64::from(wait.replicas) => true,
            Ok(acked) => {
                self.metrics.replica_wait_failures.inc();
                tracing::warn!(acked, wanted = wait.replicas, "too few Redis replicas acknowledged the gate's write; not producing");
                false
            }
            Err(error) => {
                self.metrics.replica_wait_failures.inc();
                tracing::warn!(%error, "WAIT failed; not producing");
                false
            }
        }
    }

    /// Produces the record and waits for the broker's acknowledgement, then records the
    /// outcome in the user's entry (in the background: the answer does not wait for Redis):
    /// acknowledged, or released when the record was certainly not written and this was its
    /// only delivery. Returns whether the record was acknowledged.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn deliver(
        self: Arc<Self>,
        key: EventKey,
        layout: Arc<EventLayout>,
        user_id: String,
        slot: i64,
        ordinal: i64,
        topic: &str,
        again: bool,
        deadline_ms: i64,
    ) -> bool {
        let record =
            CouponRecord { event: key.to_string(), user_id: user_id.clone(), slot, ordinal, issued_at: jiff::Timestamp::now(), mac: None };
        let record = match &self.record_keys {
            Some(keys) => keys.sign(record),
            None => record,
        };
        let event = key.id().clone();
        let payload = serde_json::to_vec(&record).expect("record serializes");
        let (generation, producer) = self.producer.current();
        let error = match producer.send(topic, &user_id, &payload).await {
            Delivery::Acked => {
                // Written in a batch with others, in the background. An entry left pending
                // (Redis unreachable for the whole retry) is marked when its row is written,
                // or delivered again by the user's next apply.
                self.acknowledgements.push(layout, user_id, slot);
                return true;
            }
            Delivery::NotPersisted(error) => error,
            Delivery::PossiblyPersisted(error) => {
                // The broker may hold the record: its slot must not go to anyone else. The
                // entry stays pending: the user's next apply after the lease delivers the
                // same record again, and healing settles it if nobody does.
                self.producer.replace_if_broken(generation, &producer, &error, self.health.is_ready("kafka"));
                self.metrics.undecided_produces.inc();
                tracing::warn!(%error, event = %event, slot, user = user_id, "produce timed out after sending; the record may be written, so the slot stays taken");
                return false;
            }
        };
        self.producer.replace_if_broken(generation, &producer, &error, self.health.is_ready("kafka"));
        if again {
            // An earlier delivery of this record may be on the broker: keep the slot.
            tracing::warn!(%error, event = %event, slot, "repeated produce failed; the slot stays with the user");
            return false;
        }
        tracing::warn!(%error, event = %event, slot, "produce failed; releasing the slot");
        self.metrics.released_slots.inc();
        tokio::spawn(async move {
            let release = |mut conn: RedisConnection| {
                let (layout, user) = (layout.clone(), user_id.clone());
                async move { keyspace::release(&mut conn, &layout, &user, slot, deadline_ms).await }
            };
            let released =
                with_retries(&self.redis, release, |error| tracing::warn!(%error, event = %event, slot, "release failed, retrying")).await;
            if released.is_none() {
                tracing::error!(event = %event, slot, user = user_id, "could not release the slot; healing will give it back");
            }
        });
        false
    }
}

/// Runs a small Redis write with backoff (20 attempts, about 20 s in all), reporting each
/// failure to `failed`; `None` if it never went through (Redis unreachable throughout).
pub(super) async fn with_retries<T, F, Fut>(redis: &RedisHandle, mut call: F, failed: impl Fn(&RedisError)) -> Option<T>
where
    F: FnMut(RedisConnection) -> Fut,
    Fut: std::future::Future<Output = Result<T, RedisError>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    for _ in 0..20 {
        if let Some(conn) = redis.get() {
            match call(conn).await {
                Ok(value) => return Some(value),
                Err(error) => failed(&error),
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
    None
}

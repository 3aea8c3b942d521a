//! The event stats as this process last read them: each event's counters read from Redis at
//! most once per `fresh_for` (a second), with one read in flight however many requests ask,
//! and a name Redis does not know remembered for `unknown_for` (a few seconds). A shop front
//! end polling "coupons left", or a flood of made-up names, then costs the master that
//! decides the sale one read per second per event and process, not one per request.
//!
//! Built on moka's cache: `get_with` runs one read per key while concurrent requests wait
//! for it, entries expire by what they hold (`Freshness`), and the number of names kept is
//! bounded, so names made up by the million cannot grow memory.

use std::future::Future;
use std::time::{Duration, Instant};

use coupon_core::event::EventId;
use coupon_core::redis::keyspace::EventCounters;
use moka::future::Cache;
use moka::Expiry;

/// What a read of an event's stats found.
#[derive(Clone, Debug)]
pub enum StatsRead {
    Known(EventCounters),
    /// Redis holds no configuration for the name.
    Unknown,
    /// Redis did not answer: kept as long as a known event's stats, so a flood during an
    /// outage does not queue reads behind each other.
    Failed,
}

/// How long each kind of read is served from memory.
struct Freshness {
    fresh_for: Duration,
    unknown_for: Duration,
}

impl Expiry<String, StatsRead> for Freshness {
    fn expire_after_create(&self, _event: &String, read: &StatsRead, _created_at: Instant) -> Option<Duration> {
        Some(match read {
            StatsRead::Unknown => self.unknown_for,
            StatsRead::Known(_) | StatsRead::Failed => self.fresh_for,
        })
    }
}

/// The stats of the events this process was asked about.
pub struct StatsCache {
    reads: Cache<String, StatsRead>,
}

impl StatsCache {
    /// Most event names kept (known or not); the least used go first.
    const MAX_EVENTS: u64 = 10_000;

    pub fn new(fresh_for: Duration, unknown_for: Duration) -> Self {
        let reads = Cache::builder().max_capacity(Self::MAX_EVENTS).expire_after(Freshness { fresh_for, unknown_for }).build();
        Self { reads }
    }

    /// The stats of `event`: from memory while fresh, else from `read`, which runs once
    /// however many requests ask at the same time.
    pub async fn get(&self, event: &EventId, read: impl Future<Output = StatsRead>) -> StatsRead {
        self.reads.get_with(event.to_string(), read).await
    }
}

impl Default for StatsCache {
    /// A second for an event's stats, five for a name nobody provisioned.
    fn default() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn one_read_serves_every_request_until_it_expires() {
        let cache = StatsCache::new(Duration::from_millis(200), Duration::from_millis(600));
        let reads = Arc::new(AtomicUsize::new(0));
        let event = EventId::new("ns", "sale").unwrap();
        let read = |found: StatsRead| {
            let reads = reads.clone();
            async move {
                reads.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                found
            }
        };
        let answers = futures::future::join_all((0..50).map(|_| cache.get(&event, read(StatsRead::Known(EventCounters::default()))))).await;
        assert!(answers.iter().all(|answer| matches!(answer, StatsRead::Known(_))));
        assert_eq!(reads.load(Ordering::SeqCst), 1, "one read in flight for fifty requests at once");
        tokio::time::sleep(Duration::from_millis(250)).await;
        cache.get(&event, read(StatsRead::Known(EventCounters::default()))).await;
        assert_eq!(reads.load(Ordering::SeqCst), 2, "read again once stale");

        let unknown = EventId::new("ns", "made-up").unwrap();
        for _ in 0..3 {
            assert!(matches!(cache.get(&unknown, read(StatsRead::Unknown)).await, StatsRead::Unknown));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(reads.load(Ordering::SeqCst), 3, "an unknown name is remembered longer");
    }
}

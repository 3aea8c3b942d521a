//! The event stats as this process last read them. A shop front end polling "coupons left",
//! or a flood of made-up names, must cost the master that decides the sale nothing per
//! request:
//!
//! - a name is first looked up in this process's copy of the list of provisioned events
//!   (`keyspace::registered_events`), read at most once per `fresh_for`, one read in flight:
//!   a name not on it is answered from memory, however many different names are made up;
//! - a provisioned event's counters are read at most once per `fresh_for` (a second), one
//!   read in flight however many requests ask (moka's `get_with`), in a task of its own so a
//!   client that goes away cannot cut it short; entries expire by what they hold
//!   (`Freshness`), and at most `MAX_EVENTS` are kept.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
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
    /// Redis did not answer: kept as long as an event's stats, so a flood during an outage
    /// does not queue reads behind each other.
    Failed,
}

/// How long a read is served from memory: the same for every kind, and counted again from
/// every refresh (an entry read again replaces the one that expired).
struct Freshness {
    fresh_for: Duration,
}

impl Expiry<String, StatsRead> for Freshness {
    fn expire_after_create(&self, _event: &String, _read: &StatsRead, _created_at: Instant) -> Option<Duration> {
        Some(self.fresh_for)
    }

    fn expire_after_update(&self, _event: &String, _read: &StatsRead, _updated_at: Instant, _left: Option<Duration>) -> Option<Duration> {
        Some(self.fresh_for)
    }
}

/// The list of provisioned events as last read (`None` inside: the read failed; kept as
/// long, so an outage does not queue reads behind each other).
type Registered = Option<(Instant, Option<Arc<HashSet<String>>>)>;

/// The stats of the events this process was asked about.
pub struct StatsCache {
    fresh_for: Duration,
    reads: Cache<String, StatsRead>,
    registered: tokio::sync::Mutex<Registered>,
}

impl StatsCache {
    /// Most events whose stats are kept (only provisioned ones get here); the least used go
    /// first.
    const MAX_EVENTS: u64 = 10_000;

    pub fn new(fresh_for: Duration) -> Self {
        let reads = Cache::builder().max_capacity(Self::MAX_EVENTS).expire_after(Freshness { fresh_for }).build();
        Self { fresh_for, reads, registered: tokio::sync::Mutex::new(None) }
    }

    /// Whether `event` is on the list of provisioned events, as read at most `fresh_for` ago
    /// (`list`: reads it). `None` when the list cannot be read.
    pub async fn is_registered<F, Fut>(&self, event: &EventId, list: F) -> Option<bool>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Option<HashSet<String>>> + Send + 'static,
    {
        let mut registered = self.registered.lock().await;
        let fresh = registered.as_ref().filter(|(read_at, _)| read_at.elapsed() < self.fresh_for).map(|(_, names)| names.clone());
        let names = match fresh {
            Some(names) => names,
            None => {
                // In a task of its own: a client that goes away does not cut the read short.
                let names = tokio::spawn(list()).await.ok().flatten().map(Arc::new);
                *registered = Some((Instant::now(), names.clone()));
                names
            }
        };
        Some(names?.contains(&event.to_string()))
    }

    /// The stats of `event`: from memory while fresh, else from `read`, which runs once (in
    /// a task of its own) however many requests ask at the same time.
    pub async fn get(&self, event: &EventId, read: impl Future<Output = StatsRead> + Send + 'static) -> StatsRead {
        self.reads.get_with(event.to_string(), async move { tokio::spawn(read).await.unwrap_or(StatsRead::Failed) }).await
    }
}

impl Default for StatsCache {
    /// A second.
    fn default() -> Self {
        Self::new(Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn counting_read(reads: &Arc<AtomicUsize>) -> impl Future<Output = StatsRead> + Send + 'static {
        let reads = reads.clone();
        async move {
            reads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            StatsRead::Known(EventCounters::default())
        }
    }

    /// One read serves every request while fresh; once stale, one read again, every time
    /// (an entry refreshed once used to keep no expiry at all, and was served for ever).
    #[tokio::test]
    async fn one_read_per_interval_however_many_ask() {
        let cache = StatsCache::new(Duration::from_millis(150));
        let reads = Arc::new(AtomicUsize::new(0));
        let event = EventId::new("ns", "sale").unwrap();
        let answers = futures::future::join_all((0..50).map(|_| cache.get(&event, counting_read(&reads)))).await;
        assert!(answers.iter().all(|answer| matches!(answer, StatsRead::Known(_))));
        assert_eq!(reads.load(Ordering::SeqCst), 1, "one read in flight for fifty requests at once");
        for refresh in 2..=5 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            futures::future::join_all((0..10).map(|_| cache.get(&event, counting_read(&reads)))).await;
            assert_eq!(reads.load(Ordering::SeqCst), refresh, "read again once stale, refresh after refresh");
        }
    }

    /// The list of provisioned events is read once per interval, and a name not on it is
    /// answered without any read of its own.
    #[tokio::test]
    async fn names_are_looked_up_in_the_list_read_once_per_interval() {
        let cache = StatsCache::new(Duration::from_millis(150));
        let reads = Arc::new(AtomicUsize::new(0));
        let list = || {
            let reads = reads.clone();
            move || async move {
                reads.fetch_add(1, Ordering::SeqCst);
                Some(HashSet::from(["ns/sale".to_owned()]))
            }
        };
        for n in 0..100 {
            let made_up = EventId::new("ns", &format!("made-up-{n}")).unwrap();
            assert_eq!(cache.is_registered(&made_up, list()).await, Some(false));
        }
        assert_eq!(cache.is_registered(&EventId::new("ns", "sale").unwrap(), list()).await, Some(true));
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(cache.is_registered(&EventId::new("ns", "sale").unwrap(), list()).await, Some(true));
        assert_eq!(reads.load(Ordering::SeqCst), 2, "read again once stale");
        assert_eq!(cache.is_registered(&EventId::new("ns", "x").unwrap(), || async { None }).await, Some(false), "fresh: not read");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(cache.is_registered(&EventId::new("ns", "sale").unwrap(), || async { None }).await, None, "a failed read");
        assert_eq!(cache.is_registered(&EventId::new("ns", "sale").unwrap(), list()).await, None, "kept as long");
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }
}

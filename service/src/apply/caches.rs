//! What an api process remembers between applies, to answer without Redis where that is
//! safe.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use coupon_core::redis::keyspace::{EventLayout, Holding};
use std::time::{Duration, Instant};

/// How the api may answer an event it saw sold out.
#[derive(Clone, Debug)]
pub struct SoldOutView {
    /// End of the window (server time, as the gate reported it).
    pub closes_at_ms: i64,
    /// Every holder's entry, once loaded for the current `holders_version`: sold-out
    /// answers then come from memory.
    pub holders: Option<Arc<HashMap<String, Holding>>>,
}

struct SoldOutEntry {
    seen: Instant,
    closes_at_ms: i64,
    holders_version: i64,
    holders: Option<Arc<HashMap<String, Holding>>>,
    loading: bool,
    /// A load for this version ended without holders: too many to keep (never tried again
    /// for this version: the next try would read as many and give up as well), or failed
    /// (tried again after `RELOAD_AFTER_FAILURE`).
    gave_up: Option<GaveUp>,
}

#[derive(Clone, Copy)]
enum GaveUp {
    TooMany,
    Failed(Instant),
}

/// How a load of the holders ended.
pub enum HoldersLoad {
    Loaded(HashMap<String, Holding>),
    /// More holders than an api keeps: sold-out applies read their own entry.
    TooMany,
    Failed,
}

/// After a failed load of the holders, the next waits this long (single reads serve meanwhile).
const RELOAD_AFTER_FAILURE: Duration = Duration::from_secs(10);

/// Events seen sold out: answered without the gate until `recheck` has passed, because a
/// released slot can reopen the event. The holders of a sold-out event change only through
/// a release, a heal or a restore, each of which changes `holders_version`; a snapshot of
/// them taken for one version stays right as long as the gate keeps reporting that version.
pub struct SoldOutCache {
    seen: RwLock<HashMap<String, SoldOutEntry>>,
    recheck: Duration,
}

impl SoldOutCache {
    pub fn new(recheck: Duration) -> Self {
        Self { seen: RwLock::new(HashMap::new()), recheck }
    }

    /// `Some` while the event is known sold out.
    pub fn sold_out(&self, event: &str) -> Option<SoldOutView> {
        let map = self.seen.read().unwrap_or_else(|e| e.into_inner());
        map.get(event)
            .filter(|entry| entry.seen.elapsed() < self.recheck)
            .map(|entry| SoldOutView { closes_at_ms: entry.closes_at_ms, holders: entry.holders.clone() })
    }

    /// Records what the gate said. Returns true if the caller should load the holders for
    /// this version (nobody has, and nobody is loading them).
    pub fn set_sold_out(&self, event: &str, closes_at_ms: i64, holders_version: i64) -> bool {
        let mut map = self.seen.write().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(event) {
            Some(entry) if entry.holders_version == holders_version => {
                entry.seen = Instant::now();
                entry.closes_at_ms = closes_at_ms;
                let may_try = match entry.gave_up {
                    None => true,
                    Some(GaveUp::TooMany) => false,
                    Some(GaveUp::Failed(at)) => at.elapsed() >= RELOAD_AFTER_FAILURE,
                };
                let load = entry.holders.is_none() && !entry.loading && may_try;
                entry.loading |= load;
                load
            }
            _ => {
                let entry =
                    SoldOutEntry { seen: Instant::now(), closes_at_ms, holders_version, holders: None, loading: true, gave_up: None };
                map.insert(event.to_owned(), entry);
                true
            }
        }
    }

    /// Stores how the load of the holders for `holders_version` ended (without holders,
    /// single reads go on).
    pub fn holders_loaded(&self, event: &str, holders_version: i64, load: HoldersLoad) {
        let mut map = self.seen.write().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = map.get_mut(event).filter(|entry| entry.holders_version == holders_version) {
            entry.loading = false;
            match load {
                HoldersLoad::Loaded(holders) => entry.holders = Some(Arc::new(holders)),
                HoldersLoad::TooMany => entry.gave_up = Some(GaveUp::TooMany),
                HoldersLoad::Failed => entry.gave_up = Some(GaveUp::Failed(Instant::now())),
            }
        }
    }

    /// The `holders_version` the event's holders are loaded for, if they are.
    pub fn loaded_version(&self, event: &str) -> Option<i64> {
        let map = self.seen.read().unwrap_or_else(|e| e.into_inner());
        map.get(event).filter(|entry| entry.holders.is_some()).map(|entry| entry.holders_version)
    }

    pub fn clear(&self, event: &str) {
        if !self.seen.read().unwrap_or_else(|e| e.into_inner()).contains_key(event) {
            return; // the common case on the issuing path: no write lock
        }
        self.seen.write().unwrap_or_else(|e| e.into_inner()).remove(event);
    }
}

/// Events this process has seen configured. If Redis later knows nothing of one, Redis lost
/// its data: the answer is 503 (try again), not 404, until the operator has written the
/// configuration back and the consumer has restored the counters.
#[derive(Default)]
pub struct KnownEvents {
    names: RwLock<HashSet<String>>,
}

impl KnownEvents {
    pub fn contains(&self, event: &str) -> bool {
        self.names.read().unwrap_or_else(|e| e.into_inner()).contains(event)
    }

    pub fn insert(&self, event: &str) {
        if !self.contains(event) {
            self.names.write().unwrap_or_else(|e| e.into_inner()).insert(event.to_owned());
        }
    }

    /// Forgets a deleted event: from now on a missing configuration means "no such event".
    pub fn remove(&self, event: &str) {
        if self.contains(event) {
            self.names.write().unwrap_or_else(|e| e.into_inner()).remove(event);
        }
    }
}

/// The layout of each event this process served: its number of shards never changes while
/// it exists, so it is read once (and again when the gate says the event was created anew
/// with another layout).
#[derive(Default)]
pub struct Layouts {
    by_event: RwLock<HashMap<String, Arc<EventLayout>>>,
}

impl Layouts {
    pub fn get(&self, event: &str) -> Option<Arc<EventLayout>> {
        self.by_event.read().unwrap_or_else(|e| e.into_inner()).get(event).cloned()
    }

    pub fn insert(&self, event: &str, layout: EventLayout) -> Arc<EventLayout> {
        let layout = Arc::new(layout);
        self.by_event.write().unwrap_or_else(|e| e.into_inner()).insert(event.to_owned(), layout.clone());
        layout
    }

    pub fn remove(&self, event: &str) {
        self.by_event.write().unwrap_or_else(|e| e.into_inner()).remove(event);
    }
}

/// One stock request at a time per shard of an event, in this process (see
/// `ApplyService::gate`).
#[derive(Default)]
pub struct StockRequests {
    turns: std::sync::Mutex<HashMap<(String, u16), Turn>>,
}

/// The turn to ask for stock for one shard.
type Turn = Arc<tokio::sync::Mutex<()>>;

impl StockRequests {
    /// Waits for this process's turn to ask for stock for `shard` of `event`; the turn lasts
    /// as long as the guard.
    pub async fn turn(&self, event: &str, shard: u16) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self.turns.lock().unwrap_or_else(|e| e.into_inner()).entry((event.to_owned(), shard)).or_default().clone();
        lock.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coupon_core::redis::keyspace::HoldingState;

    #[test]
    fn sold_out_is_remembered_until_the_recheck() {
        let cache = SoldOutCache::new(Duration::from_secs(3600));
        assert!(cache.sold_out("a").is_none());
        assert!(cache.set_sold_out("a", 42, 7), "load the holders");
        assert!(!cache.set_sold_out("a", 42, 7), "already loading");
        assert_eq!(cache.sold_out("a").unwrap().closes_at_ms, 42);
        assert!(cache.sold_out("a").unwrap().holders.is_none());
        let holder = Holding { slot: 3, state: HoldingState::Persisted, confirmed: true };
        cache.holders_loaded("a", 7, HoldersLoad::Loaded(HashMap::from([("u".to_owned(), holder.clone())])));
        assert_eq!(cache.sold_out("a").unwrap().holders.unwrap().get("u"), Some(&holder));
        assert!(!cache.set_sold_out("a", 42, 7), "loaded for this version");
        assert!(cache.set_sold_out("a", 42, 8), "a release changed the holders: load again");
        assert!(cache.sold_out("a").unwrap().holders.is_none(), "the old holders are dropped");
        cache.holders_loaded("a", 7, HoldersLoad::Loaded(HashMap::new()));
        assert!(cache.sold_out("a").unwrap().holders.is_none(), "a stale load is ignored");
        assert!(cache.sold_out("b").is_none());
        cache.clear("a");
        assert!(cache.sold_out("a").is_none(), "a released slot reopens the event at once");
        // Too many holders: not loaded again for this version, every second as it was.
        assert!(cache.set_sold_out("big", 42, 1));
        cache.holders_loaded("big", 1, HoldersLoad::TooMany);
        assert!(!cache.set_sold_out("big", 42, 1), "too many for this version");
        assert!(cache.set_sold_out("big", 42, 2), "a new version may fit");
        // A failed load is tried again, but not at once.
        cache.holders_loaded("big", 2, HoldersLoad::Failed);
        assert!(!cache.set_sold_out("big", 42, 2), "not again within RELOAD_AFTER_FAILURE");
        let expired = SoldOutCache::new(Duration::ZERO);
        expired.set_sold_out("a", 42, 1);
        assert!(expired.sold_out("a").is_none(), "re-checked once the interval has passed");
    }
}

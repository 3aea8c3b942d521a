//! What an api process remembers between applies, to answer without Redis where that is
//! safe.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use coupon_core::redis::keyspace::{EventLayout, Holders};
use std::time::{Duration, Instant};

/// How the api may answer an event it saw sold out.
#[derive(Clone, Debug)]
pub struct SoldOutView {
    /// End of the window (server time, as the gate reported it).
    pub closes_at_ms: i64,
    /// Every holder's entry, once loaded for the current `holders_version`: sold-out
    /// answers then come from memory.
    pub holders: Option<Arc<Holders>>,
}

struct SoldOutEntry {
    seen: Instant,
    closes_at_ms: i64,
    holders_version: i64,
    /// The holders as of `holders_version`: served.
    holders: Option<Arc<Holders>>,
    /// The holders last loaded, as of an earlier version: never served, but what the next
    /// load refreshes (reading only what changed since).
    earlier: Option<Arc<Holders>>,
    loading: bool,
    /// The gate issued again since (a slot came back): not answered from memory until the
    /// gate says sold out again; the holders are kept for that.
    reopened: bool,
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

/// What to load the holders from.
pub enum LoadHolders {
    /// Nothing loaded before: read every holder.
    Whole,
    /// Holders loaded for an earlier version: read what changed since.
    Refresh(Arc<Holders>),
}

/// How a load of the holders ended.
pub enum HoldersLoad {
    /// Loaded; served if they are as of the version the load was for, else kept for the
    /// next refresh (the holders changed again meanwhile).
    Loaded(Holders),
    /// More holders than an api keeps: sold-out applies read their own entry.
    TooMany,
    Failed,
}

/// After a failed load of the holders, the next waits this long (single reads serve meanwhile).
const RELOAD_AFTER_FAILURE: Duration = Duration::from_secs(10);

/// Events seen sold out: answered without the gate until `recheck` has passed, because a
/// released slot can reopen the event. The holders of a sold-out event change only through
/// a release, a heal, a slot handed out again, a new limit or a restore, each of which
/// changes `holders_version`; holders loaded as of one version stay right as long as the
/// gate keeps reporting that version, and on a new one only what changed is read again
/// (`keyspace::refresh_holders`).
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
            .filter(|entry| !entry.reopened && entry.seen.elapsed() < self.recheck)
            .map(|entry| SoldOutView { closes_at_ms: entry.closes_at_ms, holders: entry.holders.clone() })
    }

    /// Records what the gate said. Returns what the caller should load the holders from, if
    /// it should: nobody has for this version, and no load is under way (one at a time per
    /// event: a load that ends for an older version becomes what the next one refreshes).
    pub fn set_sold_out(&self, event: &str, closes_at_ms: i64, holders_version: i64) -> Option<LoadHolders> {
        let mut map = self.seen.write().unwrap_or_else(|e| e.into_inner());
        let entry = match map.get_mut(event) {
            Some(entry) if entry.holders_version == holders_version => {
                entry.seen = Instant::now();
                entry.closes_at_ms = closes_at_ms;
                entry.reopened = false;
                let may_try = match entry.gave_up {
                    None => true,
                    Some(GaveUp::TooMany) => false,
                    Some(GaveUp::Failed(at)) => at.elapsed() >= RELOAD_AFTER_FAILURE,
                };
                if entry.holders.is_some() || entry.loading || !may_try {
                    return None;
                }
                entry
            }
            Some(entry) => {
                // The holders changed: the loaded ones are no longer served, only refreshed.
                let earlier = entry.holders.take().or_else(|| entry.earlier.take());
                let loading = entry.loading;
                *entry = SoldOutEntry::new(closes_at_ms, holders_version, earlier);
                entry.loading = loading;
                if loading {
                    return None;
                }
                entry
            }
            None => map.entry(event.to_owned()).or_insert(SoldOutEntry::new(closes_at_ms, holders_version, None)),
        };
        entry.loading = true;
        entry.gave_up = None;
        Some(entry.earlier.take().map_or(LoadHolders::Whole, LoadHolders::Refresh))
    }

    /// Stores how the load of the holders for `holders_version` ended (without holders,
    /// single reads go on). Holders as of the version the gate reports now are served, even
    /// if the load was for an earlier one; others are kept for the next load to refresh.
    pub fn holders_loaded(&self, event: &str, holders_version: i64, load: HoldersLoad) {
        let mut map = self.seen.write().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = map.get_mut(event) else { return };
        entry.loading = false;
        let current = entry.holders_version == holders_version;
        match load {
            HoldersLoad::Loaded(holders) if holders.version() == entry.holders_version => entry.holders = Some(Arc::new(holders)),
            // Changed again since the gate answered: kept to be refreshed, not served.
            HoldersLoad::Loaded(holders) => entry.earlier = Some(Arc::new(holders)),
            HoldersLoad::TooMany if current => entry.gave_up = Some(GaveUp::TooMany),
            HoldersLoad::Failed if current => entry.gave_up = Some(GaveUp::Failed(Instant::now())),
            HoldersLoad::TooMany | HoldersLoad::Failed => {}
        }
    }

    /// The `holders_version` the event's holders are loaded for, if they are.
    pub fn loaded_version(&self, event: &str) -> Option<i64> {
        let map = self.seen.read().unwrap_or_else(|e| e.into_inner());
        map.get(event).filter(|entry| entry.holders.is_some()).map(|entry| entry.holders_version)
    }

    /// The gate decided something other than sold out (it issued, the event is paused or
    /// being verified): ask the gate again, but keep the holders to refresh when it sells
    /// out again.
    pub fn reopened(&self, event: &str) {
        let sold_out = self.seen.read().unwrap_or_else(|e| e.into_inner()).get(event).is_some_and(|entry| !entry.reopened);
        if !sold_out {
            return; // the common case on the issuing path: no write lock
        }
        if let Some(entry) = self.seen.write().unwrap_or_else(|e| e.into_inner()).get_mut(event) {
            entry.reopened = true;
        }
    }

    /// The event is gone (deleted): nothing of it is kept.
    pub fn forget(&self, event: &str) {
        if !self.seen.read().unwrap_or_else(|e| e.into_inner()).contains_key(event) {
            return;
        }
        self.seen.write().unwrap_or_else(|e| e.into_inner()).remove(event);
    }
}

impl SoldOutEntry {
    fn new(closes_at_ms: i64, holders_version: i64, earlier: Option<Arc<Holders>>) -> Self {
        Self { seen: Instant::now(), closes_at_ms, holders_version, holders: None, earlier, loading: false, reopened: false, gave_up: None }
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
    use coupon_core::redis::keyspace::{Holding, HoldingState};

    fn holders(version: i64, users: &[(&str, i64)]) -> Holders {
        let entry = |slot| Holding { slot, state: HoldingState::Persisted, confirmed: true };
        Holders::from_parts(vec![version], users.iter().map(|(user, slot)| (user.to_string(), entry(*slot))).collect())
    }

    #[test]
    fn sold_out_is_remembered_until_the_recheck() {
        let cache = SoldOutCache::new(Duration::from_secs(3600));
        assert!(cache.sold_out("a").is_none());
        assert!(matches!(cache.set_sold_out("a", 42, 7), Some(LoadHolders::Whole)), "load the holders");
        assert!(cache.set_sold_out("a", 42, 7).is_none(), "already loading");
        assert_eq!(cache.sold_out("a").unwrap().closes_at_ms, 42);
        assert!(cache.sold_out("a").unwrap().holders.is_none());
        cache.holders_loaded("a", 7, HoldersLoad::Loaded(holders(7, &[("u", 3)])));
        assert_eq!(cache.sold_out("a").unwrap().holders.unwrap().get("u").map(|h| h.slot), Some(3));
        assert!(cache.set_sold_out("a", 42, 7).is_none(), "loaded for this version");
        let Some(LoadHolders::Refresh(earlier)) = cache.set_sold_out("a", 42, 8) else {
            panic!("a release changed the holders: refresh what was loaded")
        };
        assert_eq!(earlier.version(), 7);
        assert!(cache.sold_out("a").unwrap().holders.is_none(), "the old holders are no longer served");
        cache.holders_loaded("a", 8, HoldersLoad::Loaded(holders(9, &[("u", 3)])));
        assert!(cache.sold_out("a").unwrap().holders.is_none(), "changed again since the gate answered: not served");
        let Some(LoadHolders::Refresh(earlier)) = cache.set_sold_out("a", 42, 9) else { panic!("refreshed from the newer load") };
        assert_eq!(earlier.version(), 9);
        cache.holders_loaded("a", 9, HoldersLoad::Loaded(holders(9, &[("u", 3)])));
        assert!(cache.sold_out("a").unwrap().holders.is_some());
        assert!(cache.sold_out("b").is_none());

        cache.reopened("a");
        assert!(cache.sold_out("a").is_none(), "a released slot reopens the event at once");
        assert!(cache.set_sold_out("a", 42, 9).is_none(), "sold out again at the same version: the holders still hold");
        assert!(cache.sold_out("a").unwrap().holders.is_some());
        cache.reopened("a");
        assert!(matches!(cache.set_sold_out("a", 42, 10), Some(LoadHolders::Refresh(_))), "kept through the reopening");
        // A newer version while a load is under way: no second load; the first one's holders
        // are served if they are as of the newest version, else refreshed by the next load.
        assert!(cache.set_sold_out("a", 42, 11).is_none(), "one load at a time");
        cache.holders_loaded("a", 10, HoldersLoad::Loaded(holders(10, &[("u", 3)])));
        assert!(cache.sold_out("a").unwrap().holders.is_none());
        let Some(LoadHolders::Refresh(earlier)) = cache.set_sold_out("a", 42, 11) else { panic!("refreshes the load for 10") };
        assert_eq!(earlier.version(), 10);
        assert!(cache.set_sold_out("a", 42, 12).is_none());
        cache.holders_loaded("a", 11, HoldersLoad::Loaded(holders(12, &[("u", 3)])));
        assert!(cache.sold_out("a").unwrap().holders.is_some(), "read as of the version reported since: served");
        cache.forget("a");
        assert!(cache.sold_out("a").is_none());
        assert!(matches!(cache.set_sold_out("a", 42, 10), Some(LoadHolders::Whole)), "a deleted event's holders are gone");

        // Too many holders: not loaded again for this version, every second as it was.
        assert!(cache.set_sold_out("big", 42, 1).is_some());
        cache.holders_loaded("big", 1, HoldersLoad::TooMany);
        assert!(cache.set_sold_out("big", 42, 1).is_none(), "too many for this version");
        assert!(matches!(cache.set_sold_out("big", 42, 2), Some(LoadHolders::Whole)), "a new version may fit");
        // A failed load is tried again, but not at once.
        cache.holders_loaded("big", 2, HoldersLoad::Failed);
        assert!(cache.set_sold_out("big", 42, 2).is_none(), "not again within RELOAD_AFTER_FAILURE");
        let expired = SoldOutCache::new(Duration::ZERO);
        expired.set_sold_out("a", 42, 1);
        assert!(expired.sold_out("a").is_none(), "re-checked once the interval has passed");
    }
}

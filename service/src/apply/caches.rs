//! What an api process remembers between applies, to answer without Redis where that is
//! safe.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// Events seen sold out, and when: answered from one read-only lookup instead of the gate
/// until `recheck` has passed, because a released slot can reopen the event.
pub struct SoldOutCache {
    seen: RwLock<HashMap<String, Instant>>,
    recheck: Duration,
}

impl SoldOutCache {
    pub fn new(recheck: Duration) -> Self {
        Self { seen: RwLock::new(HashMap::new()), recheck }
    }

    pub fn is_sold_out(&self, event: &str) -> bool {
        let map = self.seen.read().unwrap_or_else(|e| e.into_inner());
        map.get(event).is_some_and(|seen| seen.elapsed() < self.recheck)
    }

    pub fn set(&self, event: &str, sold_out: bool) {
        if !sold_out && !self.seen.read().unwrap_or_else(|e| e.into_inner()).contains_key(event) {
            return; // the common case on the issuing path: no write lock
        }
        let mut map = self.seen.write().unwrap_or_else(|e| e.into_inner());
        if sold_out {
            map.insert(event.to_owned(), Instant::now());
        } else {
            map.remove(event);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sold_out_is_remembered_until_the_recheck() {
        let cache = SoldOutCache::new(Duration::from_secs(3600));
        assert!(!cache.is_sold_out("a"));
        cache.set("a", true);
        assert!(cache.is_sold_out("a"));
        assert!(!cache.is_sold_out("b"));
        cache.set("a", false);
        assert!(!cache.is_sold_out("a"), "a released slot reopens the event at once");
        let expired = SoldOutCache::new(Duration::ZERO);
        expired.set("a", true);
        assert!(!expired.is_sold_out("a"), "re-checked once the interval has passed");
    }
}

//! What an api process remembers between applies, to answer without Redis where that is
//! safe.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// Events seen sold out, when, and when their window ends: answered without the gate (a
/// user's entry is read; the end is judged from memory) until `recheck` has passed, because
/// a released slot can reopen the event.
pub struct SoldOutCache {
    seen: RwLock<HashMap<String, (Instant, i64)>>,
    recheck: Duration,
}

impl SoldOutCache {
    pub fn new(recheck: Duration) -> Self {
        Self { seen: RwLock::new(HashMap::new()), recheck }
    }

    /// `Some(closes_at_ms)` while the event is known sold out.
    pub fn sold_out(&self, event: &str) -> Option<i64> {
        let map = self.seen.read().unwrap_or_else(|e| e.into_inner());
        map.get(event).filter(|(seen, _)| seen.elapsed() < self.recheck).map(|(_, closes_at_ms)| *closes_at_ms)
    }

    pub fn set_sold_out(&self, event: &str, closes_at_ms: i64) {
        self.seen.write().unwrap_or_else(|e| e.into_inner()).insert(event.to_owned(), (Instant::now(), closes_at_ms));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sold_out_is_remembered_until_the_recheck() {
        let cache = SoldOutCache::new(Duration::from_secs(3600));
        assert_eq!(cache.sold_out("a"), None);
        cache.set_sold_out("a", 42);
        assert_eq!(cache.sold_out("a"), Some(42));
        assert_eq!(cache.sold_out("b"), None);
        cache.clear("a");
        assert_eq!(cache.sold_out("a"), None, "a released slot reopens the event at once");
        let expired = SoldOutCache::new(Duration::ZERO);
        expired.set_sold_out("a", 42);
        assert_eq!(expired.sold_out("a"), None, "re-checked once the interval has passed");
    }
}

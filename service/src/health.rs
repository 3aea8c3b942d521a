//! Readiness of a process as the conjunction of its dependencies, each kept current by a
//! background probe, so `/readyz` answers without touching the network.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Named dependency flags; cheap to clone.
#[derive(Clone, Default)]
pub struct Health {
    components: Arc<BTreeMap<&'static str, AtomicBool>>,
    /// Components that have been ready at least once since the start.
    reached: Arc<BTreeMap<&'static str, AtomicBool>>,
}

impl Health {
    /// All components start as not ready.
    pub fn new(components: &[&'static str]) -> Self {
        let flags = || Arc::new(components.iter().map(|c| (*c, AtomicBool::new(false))).collect());
        Self { components: flags(), reached: flags() }
    }

    /// Whether every component but `except` has been ready at least once since the start.
    pub fn all_reached_once_except(&self, except: &str) -> bool {
        self.reached.iter().filter(|(name, _)| **name != except).all(|(_, flag)| flag.load(Ordering::Relaxed))
    }

    /// Sets a component's state and logs transitions, so an outage shows as one line when it
    /// starts and one when it ends.
    pub fn set(&self, component: &str, ready: bool) {
        if let Some(flag) = self.components.get(component) {
            if ready {
                if let Some(reached) = self.reached.get(component) {
                    reached.store(true, Ordering::Relaxed);
                }
            }
            let before = flag.swap(ready, Ordering::Relaxed);
            if before != ready {
                if ready {
                    tracing::info!(component, "dependency is reachable");
                } else {
                    tracing::warn!(component, "dependency is unreachable");
                }
            }
        }
    }

    pub fn is_ready(&self, component: &str) -> bool {
        self.components.get(component).is_some_and(|f| f.load(Ordering::Relaxed))
    }

    pub fn all_ready(&self) -> bool {
        self.components.values().all(|f| f.load(Ordering::Relaxed))
    }

    pub fn snapshot(&self) -> BTreeMap<&'static str, bool> {
        self.components.iter().map(|(k, v)| (*k, v.load(Ordering::Relaxed))).collect()
    }

    /// Runs `probe` every `period` for as long as the runtime lives and records its answer.
    pub fn spawn_probe<F, Fut>(&self, component: &'static str, period: Duration, probe: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send,
    {
        let health = self.clone();
        tokio::spawn(async move {
            loop {
                let ok = tokio::time::timeout(period.max(Duration::from_secs(2)), probe()).await.unwrap_or(false);
                health.set(component, ok);
                tokio::time::sleep(period).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_component_is() {
        let health = Health::new(&["redis", "kafka"]);
        assert!(!health.all_ready());
        health.set("redis", true);
        assert!(!health.all_ready());
        health.set("kafka", true);
        assert!(health.all_ready());
        health.set("unknown", false);
        assert!(health.all_ready());
        health.set("kafka", false);
        assert_eq!(health.snapshot().get("kafka"), Some(&false));
    }
}

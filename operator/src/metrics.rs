//! Prometheus metrics of the operator.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub struct Metrics {
    registry: Registry,
    pub reconciles: Counter,
    pub failures: Counter,
    pub reconcile_seconds: Histogram,
    /// Deployment scale changes made.
    pub scalings: Counter,
    /// Kafka topic creations attempted (once per event generation).
    pub topic_provisionings: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("coupon_operator");
        let reconciles = Counter::default();
        registry.register("reconciles", "Reconciles started", reconciles.clone());
        let failures = Counter::default();
        registry.register("reconcile_failures", "Reconciles that failed", failures.clone());
        let reconcile_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register("reconcile_seconds", "Reconcile duration in seconds", reconcile_seconds.clone());
        let scalings = Counter::default();
        registry.register("scalings", "Deployment scale changes", scalings.clone());
        let topic_provisionings = Counter::default();
        registry.register("topic_provisionings", "Kafka topics created (a missing topic is created again)", topic_provisionings.clone());
        Self { registry, reconciles, failures, reconcile_seconds, scalings, topic_provisionings }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

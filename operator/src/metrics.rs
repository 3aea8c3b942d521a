//! Prometheus metrics of the operator.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// One CouponEvent: `<namespace>/<name>`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    pub event: String,
}

pub struct Metrics {
    registry: Registry,
    pub reconciles: Counter,
    pub failures: Counter,
    pub reconcile_seconds: Histogram,
    /// Deployment scale changes made.
    pub scalings: Counter,
    /// Kafka topic creations attempted (once per event generation).
    pub topic_provisionings: Counter,
    /// Per event, 1 while its window is open but it is not ready to sell (not `Ready`, or its
    /// Deployments short of available replicas): what the alert on an event not ready at its
    /// start reads.
    pub event_open_unready: Family<EventLabel, Gauge>,
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
        let event_open_unready = Family::<EventLabel, Gauge>::default();
        registry.register(
            "event_open_unready",
            "1 while the event's window is open and it is not ready to sell",
            event_open_unready.clone(),
        );
        Self { registry, reconciles, failures, reconcile_seconds, scalings, topic_provisionings, event_open_unready }
    }
}

impl Metrics {
    /// Records whether `event` (`<namespace>/<name>`) is open and not ready to sell; an event
    /// no longer open keeps no series (a deleted one would otherwise stay at its last value).
    pub fn set_open_unready(&self, event: &str, open: bool, unready: bool) {
        let label = EventLabel { event: event.to_owned() };
        if open {
            self.event_open_unready.get_or_create(&label).set(i64::from(unready));
        } else {
            self.event_open_unready.remove(&label);
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

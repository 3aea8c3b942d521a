//! Prometheus metrics of the api and the consumer.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    /// `<namespace>/<name>`.
    pub event: String,
}

/// Every metric of the process, registered once.
pub struct Metrics {
    registry: Registry,
    /// Apply answers by status (`issued`, `duplicate`, `sold_out`, ...).
    pub apply_answers: Family<StatusLabel, Counter>,
    /// Time from request to answer, seconds.
    pub apply_seconds: Histogram,
    /// Produce failures that released a slot.
    pub released_slots: Counter,
    /// Stock moved between the shards of sharded events.
    pub stock_grants: Counter,
    /// Connections and requests the api answered 503 for being beyond its caps
    /// (`MAX_CONNECTIONS`, `MAX_REQUESTS_IN_FLIGHT`).
    pub shed_connections: Counter,
    pub shed_requests: Counter,
    /// For the sold-out short cut: shards whose holders were read whole, and holders read
    /// again because a shard's change log named them (a release or a heal after sell-out
    /// costs the second, not the first).
    pub holders_shards_read_whole: Counter,
    pub holders_changes_read: Counter,
    /// Produces that timed out after the record was sent: it may be written, so the slot
    /// stays taken and the user gets 503.
    pub undecided_produces: Counter,
    /// Applies that delivered the record of an earlier, unfinished delivery again.
    pub redelivered: Counter,
    /// Issued applies not produced because too few Redis replicas acknowledged (`WAIT`).
    pub replica_wait_failures: Counter,
    /// Per event, from the consumer's verification pass: slots issued, entries written,
    /// entries not yet written, entries healed, and 1 while the event is recovering.
    pub event_issued: Family<EventLabel, Gauge>,
    pub event_persisted: Family<EventLabel, Gauge>,
    pub event_unwritten: Family<EventLabel, Gauge>,
    pub event_healed: Family<EventLabel, Gauge>,
    pub event_recovering: Family<EventLabel, Gauge>,
    /// 1 once the event's window has ended (alerts on a drain that does not finish use it).
    pub event_closed: Family<EventLabel, Gauge>,
    /// Coupon rows written by the consumer.
    pub rows_written: Counter,
    /// Records sent to `failed_events`.
    pub records_failed: Counter,
    /// Records of other namespaces' events on a shared topic, left to their own consumers.
    pub records_skipped: Counter,
    /// Records held because their event's configuration is missing from Redis.
    pub records_held: Gauge,
    /// Batches committed (SQL and offsets).
    pub batches: Counter,
    /// Time to write one batch to SQL, seconds.
    pub batch_seconds: Histogram,
    /// Offset commits the broker refused (the batch will be redelivered and skipped).
    pub commit_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("coupon");
        let apply_answers = Family::<StatusLabel, Counter>::default();
        registry.register("apply_answers", "Apply answers by status", apply_answers.clone());
        let apply_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register("apply_seconds", "Apply latency in seconds", apply_seconds.clone());
        let released_slots = Counter::default();
        let stock_grants = Counter::default();
        registry.register(
            "stock_grants",
            "Grants of stock from one shard of a sharded event to another that ran out",
            stock_grants.clone(),
        );
        let shed_connections = Counter::default();
        registry.register(
            "api_shed_connections",
            "Connections answered 503 for being beyond the api's MAX_CONNECTIONS",
            shed_connections.clone(),
        );
        let shed_requests = Counter::default();
        registry.register(
            "api_shed_requests",
            "Requests answered 503 for being beyond the api's MAX_REQUESTS_IN_FLIGHT",
            shed_requests.clone(),
        );
        let holders_shards_read_whole = Counter::default();
        registry.register(
            "holders_shards_read_whole",
            "Shards of sold-out events whose holders the api read whole, to answer sold-out applies from memory",
            holders_shards_read_whole.clone(),
        );
        let holders_changes_read = Counter::default();
        registry.register(
            "holders_changes_read",
            "Holders of sold-out events the api read again because they changed (a release, a heal)",
            holders_changes_read.clone(),
        );
        registry.register("released_slots", "Slots given back after a failed produce", released_slots.clone());
        let undecided_produces = Counter::default();
        registry.register("undecided_produces", "Produces that timed out after sending; slot kept", undecided_produces.clone());
        let redelivered = Counter::default();
        registry.register("redelivered", "Applies that delivered an unfinished record again", redelivered.clone());
        let replica_wait_failures = Counter::default();
        registry.register(
            "replica_wait_failures",
            "Issued applies not produced: too few Redis replicas acknowledged",
            replica_wait_failures.clone(),
        );
        let event_issued = Family::<EventLabel, Gauge>::default();
        registry.register("event_issued", "Slots issued per event", event_issued.clone());
        let event_persisted = Family::<EventLabel, Gauge>::default();
        registry.register("event_persisted", "Coupons written to SQL per event", event_persisted.clone());
        let event_unwritten = Family::<EventLabel, Gauge>::default();
        registry.register("event_unwritten", "Issued coupons not yet written per event", event_unwritten.clone());
        let event_healed = Family::<EventLabel, Gauge>::default();
        registry.register("event_healed", "Issued coupons given back by healing per event", event_healed.clone());
        let event_recovering = Family::<EventLabel, Gauge>::default();
        registry.register("event_recovering", "1 while the event is being verified against SQL", event_recovering.clone());
        let event_closed = Family::<EventLabel, Gauge>::default();
        registry.register("event_closed", "1 once the event's window has ended", event_closed.clone());
        let rows_written = Counter::default();
        registry.register("consumer_rows_written", "Coupon rows written to SQL", rows_written.clone());
        let records_failed = Counter::default();
        registry.register("consumer_records_failed", "Records written to failed_events", records_failed.clone());
        let records_skipped = Counter::default();
        registry.register(
            "consumer_records_skipped",
            "Records of other namespaces' events on a shared topic, left to their own consumers",
            records_skipped.clone(),
        );
        let records_held = Gauge::default();
        registry.register(
            "consumer_records_held",
            "Records held because their event's configuration is missing from Redis (the rest are written)",
            records_held.clone(),
        );
        let batches = Counter::default();
        registry.register("consumer_batches", "Batches committed to SQL and Kafka", batches.clone());
        let batch_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register("consumer_batch_seconds", "SQL time per batch in seconds", batch_seconds.clone());
        let commit_errors = Counter::default();
        registry.register("consumer_commit_errors", "Offset commits that failed", commit_errors.clone());
        Self {
            registry,
            apply_answers,
            apply_seconds,
            released_slots,
            stock_grants,
            shed_connections,
            shed_requests,
            holders_shards_read_whole,
            holders_changes_read,
            undecided_produces,
            redelivered,
            replica_wait_failures,
            event_issued,
            event_persisted,
            event_unwritten,
            event_healed,
            event_recovering,
            event_closed,
            rows_written,
            records_failed,
            records_skipped,
            records_held,
            batches,
            batch_seconds,
            commit_errors,
        }
    }
}

impl Metrics {
    pub fn shared() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn answer(&self, status: &'static str) {
        self.apply_answers.get_or_create(&StatusLabel { status }).inc();
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

//! The apply decision: validate, ask the gate, produce the record, give the slot back when
//! the record was certainly not written. HTTP lives in `crate::http`; this module answers
//! with an `ApplyOutcome`.

mod acks;
mod caches;
mod delivery;
pub mod gate_batches;
mod idempotency;
mod outcome;
pub mod producer;
mod stock;

use std::sync::Arc;
use std::time::Duration;

use coupon_core::event::{validate_user_id, EventId, EventKey};
use coupon_core::redis::keyspace::{self, EventLayout, GateDecision, Holders, Holding, HoldingState};
use coupon_core::redis::{RedisConnection, RedisError, RedisHandle};

use acks::Acknowledgements;
pub use caches::{HoldersLoad, KnownEvents, Layouts, LoadHolders, SoldOutCache, SoldOutView, StockRequests};
use gate_batches::GateBatches;
pub use idempotency::IdempotencyKey;
pub use outcome::ApplyOutcome;
use producer::ProducerSlot;

use crate::health::Health;
use crate::metrics::Metrics;

/// Health components of the api: its dependencies, `identity` (true once the keys that check
/// tokens are at hand: at once, except with a JWKS URL not fetched yet), and `serving`, which
/// turns false when the process is asked to stop (so endpoints drain before it stops
/// accepting).
pub const COMPONENTS: &[&str] = &["redis", "kafka", "identity", "serving"];

/// Most holders an api keeps in memory per sold-out event (about 100 bytes each); larger
/// events answer sold-out applies with one Redis read each.
const HOLDERS_IN_MEMORY: usize = 200_000;

/// Added to the produce timeout to make the lease of a delivery: until it has passed, a
/// repeated apply of the same user answers 409 instead of delivering the record again.
const LEASE_MARGIN: Duration = Duration::from_secs(1);

/// Optional synchronous replication of the gate's writes (`WAIT`), for a Redis with
/// replicas: the record is produced only once `replicas` replicas hold the user's entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaWait {
    pub replicas: u32,
    pub timeout: Duration,
}

/// Decides applies for the events of one namespace.
pub struct ApplyService {
    namespace: String,
    redis: RedisHandle,
    producer: ProducerSlot,
    health: Health,
    metrics: Arc<Metrics>,
    sold_out: SoldOutCache,
    known: KnownEvents,
    layouts: Layouts,
    stock_requests: StockRequests,
    acknowledgements: Acknowledgements,
    gate_batches: GateBatches,
    lease: Duration,
    replica_wait: Option<ReplicaWait>,
    /// Redis may evict the keys the events depend on (set by the readiness probe): nothing
    /// is issued until that changes.
    eviction_risk: std::sync::atomic::AtomicBool,
    /// Keys every record is signed with (`coupon_core::event::RecordKeys`).
    record_keys: Option<Arc<coupon_core::event::RecordKeys>>,
}

/// What `GET /v1/events/{event}/users/{userId}` answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LookupOutcome {
    Found(Holding),
    NoCoupon,
    UnknownEvent,
    Unavailable,
}

impl ApplyService {
    /// Must be called within the Tokio runtime (it starts the acknowledgement writer).
    pub fn new(
        namespace: String,
        redis: RedisHandle,
        producer: ProducerSlot,
        health: Health,
        metrics: Arc<Metrics>,
        sold_out_recheck: Duration,
        replica_wait: Option<ReplicaWait>,
    ) -> Self {
        let acknowledgements = Acknowledgements::start(redis.clone());
        let lease = producer.produce_timeout() + replica_wait.map_or(Duration::ZERO, |w| w.timeout) + LEASE_MARGIN;
        let gate_batches = GateBatches::new(redis.clone(), lease);
        Self {
            namespace,
            redis,
            producer,
            health,
            metrics,
            sold_out: SoldOutCache::new(sold_out_recheck),
            known: KnownEvents::default(),
            layouts: Layouts::default(),
            stock_requests: StockRequests::default(),
            acknowledgements,
            gate_batches,
            lease,
            replica_wait,
            eviction_risk: Default::default(),
            record_keys: None,
        }
    }

    /// Signs every record with these keys' signing key (none: unsigned).
    pub fn with_record_keys(mut self, keys: Option<Arc<coupon_core::event::RecordKeys>>) -> Self {
        self.record_keys = keys;
        self
    }

    /// What the probe found of Redis' eviction setting; returns whether it is safe. Logged
    /// when it changes.
    pub fn set_eviction_risk(&self, risk: Option<&coupon_core::redis::keyspace::EvictionRisk>) -> bool {
        let risky = risk.is_some();
        let before = self.eviction_risk.swap(risky, std::sync::atomic::Ordering::Relaxed);
        match (before, risk) {
            (false, Some(risk)) => tracing::error!(%risk, "nothing is issued"),
            (true, None) => tracing::info!("Redis no longer evicts the events' keys; issuing again"),
            _ => {}
        }
        !risky
    }

    /// The `holders_version` this process holds a snapshot of the event's holders for (it
    /// answers sold-out applies from memory), if any: for diagnostics and tests.
    pub fn holders_snapshot(&self, event: &EventId) -> Option<i64> {
        self.sold_out.loaded_version(event.name())
    }

    /// Whether this process has served `event` (seen it configured): if Redis then knows
    /// nothing of it, Redis lost its data.
    pub fn served(&self, event: &EventId) -> bool {
        self.known.contains(event.name())
    }

    pub fn producer(&self) -> &ProducerSlot {
        &self.producer
    }

    /// The event `name` of this api's namespace.
    pub fn event_id(&self, name: &str) -> Result<EventId, ApplyOutcome> {
        EventId::new(&self.namespace, name).map_err(ApplyOutcome::bad_request)
    }

    /// Decides one apply of `user_id` to `event` (from `event_id`).
    pub async fn apply(self: &Arc<Self>, event: EventId, user_id: String) -> ApplyOutcome {
        if let Err(error) = validate_user_id(&user_id) {
            return ApplyOutcome::bad_request(error);
        }
        if let Some(view) = self.sold_out.sold_out(event.name()) {
            if let Some(answer) = self.answer_sold_out(&event, &user_id, view).await {
                return answer;
            }
        }
        // From the gate to the broker's answer, the decision runs in its own task: a client
        // that goes away, or the request timeout, cannot stop it half-way and leave a slot
        // issued whose record nobody produces.
        let this = self.clone();
        tokio::spawn(async move { this.decide(event, user_id).await }).await.unwrap_or(ApplyOutcome::Unavailable)
    }

    /// The sold-out short cut: the user's entry (from the holders snapshot once loaded,
    /// else one read), then the window's end (403) judged from memory; no gate. `None`: ask
    /// the gate (the user's delivery is pending or unconfirmed).
    async fn answer_sold_out(&self, event: &EventId, user_id: &str, view: SoldOutView) -> Option<ApplyOutcome> {
        let holding = match &view.holders {
            Some(holders) => holders.get(user_id).cloned(),
            None => {
                let Some(mut conn) = self.redis.get() else { return Some(ApplyOutcome::Unavailable) };
                let holdings = match self.layout(&mut conn, event).await {
                    Ok(layout) => keyspace::holdings(&mut conn, &layout, user_id).await,
                    Err(error) => Err(error),
                };
                match holdings {
                    Ok(holdings) => keyspace::representative(holdings),
                    Err(error) => {
                        tracing::warn!(%error, "sold-out lookup failed");
                        return Some(ApplyOutcome::Unavailable);
                    }
                }
            }
        };
        match holding {
            Some(Holding { state: HoldingState::Pending, .. } | Holding { confirmed: false, .. }) => None,
            Some(holding) => Some(ApplyOutcome::Duplicate { slot: holding.slot, slots: Vec::new() }),
            None if jiff::Timestamp::now().as_millisecond() >= view.closes_at_ms => Some(ApplyOutcome::Closed),
            None => Some(ApplyOutcome::SoldOut),
        }
    }

    /// Loads the holders of a sold-out event for the sold-out short cut (in the background;
    /// single reads serve meanwhile): all of them the first time, then what changed.
    fn load_holders(self: &Arc<Self>, event: EventId, holders_version: i64, from: LoadHolders) {
        let this = self.clone();
        tokio::spawn(async move {
            let load = match this.redis.get() {
                Some(mut conn) => match this.holders(&mut conn, &event, from).await {
                    Ok(Some(holders)) => HoldersLoad::Loaded(holders),
                    Ok(None) => HoldersLoad::TooMany,
                    Err(error) => {
                        tracing::warn!(%error, event = %event, "cannot load the holders; reading entries one by one");
                        HoldersLoad::Failed
                    }
                },
                None => HoldersLoad::Failed,
            };
            this.sold_out.holders_loaded(event.name(), holders_version, load);
        });
    }

    async fn decide(self: Arc<Self>, event: EventId, user_id: String) -> ApplyOutcome {
        let name = event.name();
        let Some(mut conn) = self.redis.get() else { return ApplyOutcome::Unavailable };
        if !self.health.is_ready("kafka") {
            // Nothing is counted while the broker is known to be down.
            return ApplyOutcome::Unavailable;
        }
        if self.eviction_risk.load(std::sync::atomic::Ordering::Relaxed) {
            // Counted on keys Redis may evict, a coupon could be handed out twice.
            return ApplyOutcome::Unavailable;
        }
        let (layout, decision) = match self.gate(&mut conn, &event, &user_id).await {
            Ok(decided) => decided,
            Err(error) => {
                // Redis may still run the script (a response timeout): the user's entry is
                // then pending, and their next apply after the lease delivers it.
                tracing::warn!(%error, "gate script failed");
                return ApplyOutcome::Unavailable;
            }
        };
        match decision {
            GateDecision::Missing => {
                // Known here but unknown to Redis: Redis lost its data (503 until the
                // operator and the consumer restored it), not a name nobody provisioned.
                return if self.known.contains(name) { ApplyOutcome::Unavailable } else { ApplyOutcome::UnknownEvent };
            }
            GateDecision::Deleted => {
                self.known.remove(name);
                self.sold_out.forget(name);
                return ApplyOutcome::UnknownEvent;
            }
            _ => self.known.insert(name),
        }
        match decision {
            GateDecision::Issued { slot, topic, incarnation, again, deadline_ms, ordinal } => {
                self.sold_out.reopened(name);
                if again {
                    self.metrics.redelivered.inc();
                }
                if !self.replicated(&mut conn, &layout, &user_id).await {
                    return ApplyOutcome::Unavailable;
                }
                // Provisioning validates the incarnation; one written by hand that is not
                // valid must not become a record under another key: nothing is produced
                // (the pending entry is healed once its lease is over).
                let Ok(key) = EventKey::new(event.clone(), incarnation.as_deref()) else {
                    tracing::error!(event = %event, ?incarnation, "invalid incarnation in the event's configuration: not producing");
                    return ApplyOutcome::Unavailable;
                };
                if self.clone().deliver(key, layout, user_id, slot, ordinal, &topic, again, deadline_ms).await {
                    ApplyOutcome::Issued { slot }
                } else {
                    ApplyOutcome::Unavailable
                }
            }
            GateDecision::Confirmed { slot } => ApplyOutcome::Issued { slot },
            GateDecision::Duplicate { slot, slots } => {
                // Listed only when the user holds more than one: one coupon's answer stays as it was.
                ApplyOutcome::Duplicate { slot, slots: if slots.len() > 1 { slots } else { Vec::new() } }
            }
            GateDecision::SoldOut { closes_at_ms, holders_version } => {
                if let Some(from) = self.sold_out.set_sold_out(name, closes_at_ms, holders_version) {
                    self.load_holders(event.clone(), holders_version, from);
                }
                ApplyOutcome::SoldOut
            }
            GateDecision::NotOpen => ApplyOutcome::NotOpen,
            GateDecision::Paused => {
                self.sold_out.reopened(name);
                ApplyOutcome::Paused
            }
            GateDecision::Closed => ApplyOutcome::Closed,
            GateDecision::Recovering => {
                // Being restored from SQL: whatever this process read of the holders is of a
                // state that is being replaced.
                self.sold_out.forget(name);
                ApplyOutcome::Unavailable
            }
            // `gate` resolves these two (stock from other shards, the layout read again);
            // they are left over only when that did not succeed in time.
            GateDecision::ShardEmpty { .. } | GateDecision::OtherLayout => ApplyOutcome::Unavailable,
            GateDecision::Missing | GateDecision::Deleted => ApplyOutcome::Unavailable,
        }
    }

    /// The event's layout: remembered per event (its number of shards never changes while
    /// the event exists), read from its home configuration the first time. Every path of the
    /// api that needs it takes it from here (placing a sharded event's shards takes
    /// thousands of hashes).
    pub async fn layout(&self, conn: &mut RedisConnection, event: &EventId) -> Result<Arc<EventLayout>, RedisError> {
        if let Some(layout) = self.layouts.get(event.name()) {
            return Ok(layout);
        }
        match keyspace::layout(conn, event).await? {
            Some(layout) => Ok(self.layouts.insert(event.name(), layout)),
            // Not provisioned: the gate answers for the home shard (missing or deleted).
            None => Ok(Arc::new(EventLayout::single(event))),
        }
    }

    /// Every holder of every shard (read whole, or what changed since `from`), or `None` if
    /// there are too many to keep.
    async fn holders(&self, conn: &mut RedisConnection, event: &EventId, from: LoadHolders) -> Result<Option<Holders>, RedisError> {
        let layout = self.layout(conn, event).await?;
        match from {
            LoadHolders::Whole => {
                let holders = keyspace::holders(conn, &layout, HOLDERS_IN_MEMORY).await?;
                if holders.is_some() {
                    self.metrics.holders_shards_read_whole.inc_by(u64::from(layout.shard_count()));
                }
                Ok(holders)
            }
            LoadHolders::Refresh(earlier) => {
                let mut holders = Arc::unwrap_or_clone(earlier);
                let Some(read) = keyspace::refresh_holders(conn, &layout, &mut holders, HOLDERS_IN_MEMORY).await? else {
                    return Ok(None);
                };
                self.metrics.holders_shards_read_whole.inc_by(u64::from(read.shards_read_whole));
                self.metrics.holders_changes_read.inc_by(read.changed_users as u64);
                Ok(Some(holders))
            }
        }
    }

    /// The user's coupon in `event`.
    pub async fn lookup(&self, event: &EventId, user_id: &str) -> LookupOutcome {
        if validate_user_id(user_id).is_err() {
            return LookupOutcome::NoCoupon;
        }
        let Some(mut conn) = self.redis.get() else { return LookupOutcome::Unavailable };
        let view = match self.layout(&mut conn, event).await {
            Ok(layout) => keyspace::user_view(&mut conn, &layout, user_id).await,
            Err(error) => Err(error),
        };
        match view {
            Ok(view) if !view.provisioned => {
                if self.known.contains(event.name()) {
                    LookupOutcome::Unavailable
                } else {
                    LookupOutcome::UnknownEvent
                }
            }
            Ok(view) if view.recovering => LookupOutcome::Unavailable,
            Ok(view) => view.holdings.into_iter().next().map_or(LookupOutcome::NoCoupon, LookupOutcome::Found),
            Err(error) => {
                tracing::warn!(%error, "user lookup failed");
                LookupOutcome::Unavailable
            }
        }
    }
}

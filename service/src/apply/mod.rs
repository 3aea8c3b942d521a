//! The apply decision: validate, ask the gate, produce the record, give the slot back when
//! the record was certainly not written. HTTP lives in `crate::http`; this module answers
//! with an `ApplyOutcome`.

mod acks;
mod caches;
mod gate_batches;
mod outcome;
pub mod producer;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use coupon_core::event::{validate_user_id, CouponRecord, EventId, EventKey};
use coupon_core::redis::keyspace::{self, EventLayout, GateDecision, Grant, GrantVerdict, Holding, HoldingState};
use coupon_core::redis::{RedisConnection, RedisError, RedisHandle};
use coupon_core::retry::Backoff;

use acks::Acknowledgements;
pub use caches::{KnownEvents, Layouts, SoldOutCache, SoldOutView, StockRequests};
use gate_batches::GateBatches;
pub use outcome::ApplyOutcome;
use producer::{Delivery, ProducerSlot};

use crate::health::Health;
use crate::metrics::Metrics;

/// Health components of the api: its dependencies, and `serving`, which turns false when the
/// process is asked to stop (so endpoints drain before it stops accepting).
pub const COMPONENTS: &[&str] = &["redis", "kafka", "serving"];

/// Most holders an api keeps in memory per sold-out event (about 100 bytes each); larger
/// events answer sold-out applies with one Redis read each.
const HOLDERS_IN_MEMORY: usize = 200_000;

/// Stock requests one apply may make on a sharded event before it answers 503: each finds
/// the shard with the most stock and takes half of it, so a few suffice even when every
/// user hashes to one shard; more are needed only while other applies race for the last
/// coupons.
const STOCK_REQUESTS: u32 = 8;
/// Most slots one grant moves (half of the richest shard's stock, at most this).
const GRANT_MAX: i64 = 1_000;
/// Longest an apply spends looking for stock on a sharded event (waiting for its turn,
/// reading the shards, asking for a grant) before it answers 503 without another gate call.
/// With the gate's queue wait and one Redis call after it, the gate keeps within the 3 s a
/// request keeps for Redis (`ApiSettings::check`): a 408 never hides an issued coupon, and
/// applies that find their shard empty while another shard's master stalls do not queue
/// without end behind each other's stock requests.
const STOCK_WAIT_MAX: Duration = Duration::from_millis(500);

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
        }
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
                    Ok(holdings) => holdings.into_iter().next(),
                    Err(error) => {
                        tracing::warn!(%error, "sold-out lookup failed");
                        return Some(ApplyOutcome::Unavailable);
                    }
                }
            }
        };
        match holding {
            Some(Holding { state: HoldingState::Pending, .. } | Holding { confirmed: false, .. }) => None,
            Some(holding) => Some(ApplyOutcome::Duplicate { slot: holding.slot }),
            None if Utc::now().timestamp_millis() >= view.closes_at_ms => Some(ApplyOutcome::Closed),
            None => Some(ApplyOutcome::SoldOut),
        }
    }

    /// Loads the holders of a sold-out event for the sold-out short cut (in the background;
    /// single reads serve meanwhile).
    fn load_holders(self: &Arc<Self>, event: EventId, holders_version: i64) {
        let this = self.clone();
        tokio::spawn(async move {
            let holders = match this.redis.get() {
                Some(mut conn) => match this.holders(&mut conn, &event).await {
                    Ok(holders) => holders,
                    Err(error) => {
                        tracing::warn!(%error, event = %event, "cannot load the holders; reading entries one by one");
                        None
                    }
                },
                None => None,
            };
            this.sold_out.holders_loaded(event.name(), holders_version, holders);
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
                self.sold_out.clear(name);
                return ApplyOutcome::UnknownEvent;
            }
            _ => self.known.insert(name),
        }
        match decision {
            GateDecision::Issued { slot, topic, incarnation, again, deadline_ms } => {
                self.sold_out.clear(name);
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
                if self.clone().deliver(key, layout, user_id, slot, &topic, again, deadline_ms).await {
                    ApplyOutcome::Issued { slot }
                } else {
                    ApplyOutcome::Unavailable
                }
            }
            GateDecision::Confirmed { slot } => ApplyOutcome::Issued { slot },
            GateDecision::Duplicate { slot } => ApplyOutcome::Duplicate { slot },
            GateDecision::SoldOut { closes_at_ms, holders_version } => {
                if self.sold_out.set_sold_out(name, closes_at_ms, holders_version) {
                    self.load_holders(event.clone(), holders_version);
                }
                ApplyOutcome::SoldOut
            }
            GateDecision::NotOpen => ApplyOutcome::NotOpen,
            GateDecision::Paused => {
                self.sold_out.clear(name);
                ApplyOutcome::Paused
            }
            GateDecision::Closed => ApplyOutcome::Closed,
            GateDecision::Recovering => {
                self.sold_out.clear(name);
                ApplyOutcome::Unavailable
            }
            // `gate` resolves these two (stock from other shards, the layout read again);
            // they are left over only when that did not succeed in time.
            GateDecision::ShardEmpty { .. } | GateDecision::OtherLayout => ApplyOutcome::Unavailable,
            GateDecision::Missing | GateDecision::Deleted => ApplyOutcome::Unavailable,
        }
    }

    /// The event's layout: remembered per event (its number of shards never changes while
    /// the event exists), read from its home configuration the first time.
    async fn layout(&self, conn: &mut RedisConnection, event: &EventId) -> Result<Arc<EventLayout>, RedisError> {
        if let Some(layout) = self.layouts.get(event.name()) {
            return Ok(layout);
        }
        match keyspace::layout(conn, event).await? {
            Some(layout) => Ok(self.layouts.insert(event.name(), layout)),
            // Not provisioned: the gate answers for the home shard (missing or deleted).
            None => Ok(Arc::new(EventLayout::single(event))),
        }
    }

    /// Every holder of every shard, or `None` if there are too many to keep.
    async fn holders(&self, conn: &mut RedisConnection, event: &EventId) -> Result<Option<HashMap<String, Holding>>, RedisError> {
        let layout = self.layout(conn, event).await?;
        keyspace::holders(conn, &layout, HOLDERS_IN_MEMORY).await
    }

    /// Asks the user's home shard. When it has no stock left on a sharded event, asks the
    /// other shards for some (`find_stock`) and asks again with the grant, until it decides,
    /// the event is sold out everywhere, or `STOCK_REQUESTS` ran out.
    async fn gate(
        &self,
        conn: &mut RedisConnection,
        event: &EventId,
        user_id: &str,
    ) -> Result<(Arc<EventLayout>, GateDecision), RedisError> {
        let mut layout = self.layout(conn, event).await?;
        let mut grant: Option<(u16, Grant)> = None;
        let mut layout_read_again = false;
        let mut requests = 0;
        let mut stock_turn = None;
        let stock_deadline = tokio::time::Instant::now() + STOCK_WAIT_MAX;
        loop {
            // A grant goes with the one apply that asked for it; every other apply waits
            // for its shard's next call, with the others waiting then. So does an apply to a
            // name this process has no layout for (not provisioned, or just deleted): it
            // starts no writer.
            let (decision, taken) = match &grant {
                Some((_, grant)) => keyspace::apply(conn, &layout, user_id, self.lease, Some(grant)).await?,
                None if self.layouts.get(event.name()).is_some() => (self.gate_batches.decide(&layout, user_id).await?, false),
                None => keyspace::apply(conn, &layout, user_id, self.lease, None).await?,
            };
            if let (Some((source, grant)), true) = (grant.take(), taken) {
                self.settle_in_background(layout.clone(), source, grant.id);
            }
            match decision {
                // A shard without configuration: the event may have been deleted (its tombstone
                // is on the home shard only) or created again with another layout.
                GateDecision::OtherLayout | GateDecision::Missing
                    if !layout_read_again && (layout.is_sharded() || decision == GateDecision::OtherLayout) =>
                {
                    layout_read_again = true;
                    self.layouts.remove(event.name());
                    layout = self.layout(conn, event).await?;
                }
                GateDecision::ShardEmpty { closes_at_ms, .. } if requests < STOCK_REQUESTS => {
                    requests += 1;
                    let home = layout.home_shard(user_id);
                    // Every step of the search is bounded (`STOCK_WAIT_MAX`); one cut short
                    // answers 503. A grant asked for and not awaited is closed by healing.
                    if stock_turn.is_none() {
                        // One stock request per shard at a time in this process: the applies
                        // that find the shard empty meanwhile wait for it and ask the shard
                        // again, served by the stock it brought, instead of each draining
                        // the others by half.
                        let Ok(turn) = tokio::time::timeout_at(stock_deadline, self.stock_requests.turn(event.name(), home)).await else {
                            return Ok((layout, decision));
                        };
                        stock_turn = Some(turn);
                        continue;
                    }
                    let Ok(stock) = tokio::time::timeout_at(stock_deadline, self.find_stock(conn, &layout, home)).await else {
                        return Ok((layout, decision));
                    };
                    match stock? {
                        Stock::Granted(source, found) => grant = Some((source, found)),
                        Stock::SoldOut { holders_version } => {
                            return Ok((layout, GateDecision::SoldOut { closes_at_ms, holders_version }));
                        }
                        // Slots in flight between shards, or being given back: ask again.
                        Stock::Elsewhere => {
                            let pause = Duration::from_millis(5 * u64::from(requests));
                            if tokio::time::timeout_at(stock_deadline, tokio::time::sleep(pause)).await.is_err() {
                                return Ok((layout, decision));
                            }
                        }
                    }
                }
                decision => return Ok((layout, decision)),
            }
        }
    }

    /// Looks for stock for the empty shard `target`: sold out when no shard has a slot to
    /// hand out (slots held, in flight in a grant, or kept by a heal for a row whose entry
    /// is gone all count as taken), else half of the richest other shard's stock (at most
    /// `GRANT_MAX`). Reads every shard once: paid only by applies that find their shard
    /// empty, and answered from memory once the event is sold out everywhere.
    async fn find_stock(&self, conn: &mut RedisConnection, layout: &EventLayout, target: u16) -> Result<Stock, RedisError> {
        let (mut available, mut recovering) = (0, false);
        let mut versions = Vec::with_capacity(usize::from(layout.shard_count()));
        let mut richest: Option<(u16, i64)> = None;
        for shard in layout.shards() {
            let Some(stock) = keyspace::stock(conn, layout, shard).await? else { continue };
            available += stock.available;
            recovering |= stock.recovering;
            versions.push(stock.holders_version);
            if shard != target && !stock.recovering && stock.available > richest.map_or(0, |(_, most)| most) {
                richest = Some((shard, stock.available));
            }
        }
        if available == 0 && !recovering {
            // The shards were read one after the other: a slot given back on a shard read
            // early could have been taken on one read later. Sold out only if no shard's
            // holders changed meanwhile (a release or a heal changes `holders_version`).
            let mut again = Vec::with_capacity(versions.len());
            for shard in layout.shards() {
                if let Some(stock) = keyspace::stock(conn, layout, shard).await? {
                    again.push(stock.holders_version);
                }
            }
            if again != versions {
                return Ok(Stock::Elsewhere);
            }
            return Ok(Stock::SoldOut { holders_version: versions.iter().sum() });
        }
        let Some((source, available)) = richest else { return Ok(Stock::Elsewhere) };
        let wanted = ((available + 1) / 2).clamp(1, GRANT_MAX);
        Ok(match keyspace::grant(conn, layout, source, target, wanted, self.lease, &keyspace::unique_id()).await? {
            Some(grant) => {
                self.metrics.stock_grants.inc();
                Stock::Granted(source, grant)
            }
            None => Stock::Elsewhere,
        })
    }

    /// Settles a grant its target took (healing settles those nobody did).
    fn settle_in_background(&self, layout: Arc<EventLayout>, source: u16, id: String) {
        let redis = self.redis.clone();
        tokio::spawn(async move {
            if let Some(mut conn) = redis.get() {
                if let Err(error) = keyspace::settle_grant(&mut conn, &layout, source, &id, GrantVerdict::Taken).await {
                    tracing::warn!(%error, grant = id, "could not settle a grant; healing will");
                }
            }
        });
    }

    /// With `ReplicaWait`, whether enough replicas hold the gate's write. If not, nothing is
    /// produced: the entry stays pending and the user's retry after the lease delivers it.
    async fn replicated(&self, conn: &mut RedisConnection, layout: &EventLayout, user_id: &str) -> bool {
        let Some(wait) = self.replica_wait else { return true };
        match keyspace::wait_for_replicas(conn, layout, user_id, wait.replicas, wait.timeout).await {
            Ok(acked) if acked >= i64::from(wait.replicas) => true,
            Ok(acked) => {
                self.metrics.replica_wait_failures.inc();
                tracing::warn!(acked, wanted = wait.replicas, "too few Redis replicas acknowledged the gate's write; not producing");
                false
            }
            Err(error) => {
                self.metrics.replica_wait_failures.inc();
                tracing::warn!(%error, "WAIT failed; not producing");
                false
            }
        }
    }

    /// Produces the record and waits for the broker's acknowledgement, then records the
    /// outcome in the user's entry (in the background: the answer does not wait for Redis):
    /// acknowledged, or released when the record was certainly not written and this was its
    /// only delivery. Returns whether the record was acknowledged.
    #[allow(clippy::too_many_arguments)]
    async fn deliver(
        self: Arc<Self>,
        key: EventKey,
        layout: Arc<EventLayout>,
        user_id: String,
        slot: i64,
        topic: &str,
        again: bool,
        deadline_ms: i64,
    ) -> bool {
        let record = CouponRecord { event: key.to_string(), user_id: user_id.clone(), slot, issued_at: Utc::now() };
        let event = key.id().clone();
        let payload = serde_json::to_vec(&record).expect("record serializes");
        let (generation, producer) = self.producer.current();
        let error = match producer.send(topic, &user_id, &payload).await {
            Delivery::Acked => {
                // Written in a batch with others, in the background. An entry left pending
                // (Redis unreachable for the whole retry) is marked when its row is written,
                // or delivered again by the user's next apply.
                self.acknowledgements.push(layout, user_id, slot);
                return true;
            }
            Delivery::NotPersisted(error) => error,
            Delivery::PossiblyPersisted(error) => {
                // The broker may hold the record: its slot must not go to anyone else. The
                // entry stays pending: the user's next apply after the lease delivers the
                // same record again, and healing settles it if nobody does.
                self.producer.replace_if_broken(generation, &producer, &error, self.health.is_ready("kafka"));
                self.metrics.undecided_produces.inc();
                tracing::warn!(%error, event = %event, slot, user = user_id, "produce timed out after sending; the record may be written, so the slot stays taken");
                return false;
            }
        };
        self.producer.replace_if_broken(generation, &producer, &error, self.health.is_ready("kafka"));
        if again {
            // An earlier delivery of this record may be on the broker: keep the slot.
            tracing::warn!(%error, event = %event, slot, "repeated produce failed; the slot stays with the user");
            return false;
        }
        tracing::warn!(%error, event = %event, slot, "produce failed; releasing the slot");
        self.metrics.released_slots.inc();
        tokio::spawn(async move {
            let release = |mut conn: RedisConnection| {
                let (layout, user) = (layout.clone(), user_id.clone());
                async move { keyspace::release(&mut conn, &layout, &user, slot, deadline_ms).await }
            };
            let released =
                with_retries(&self.redis, release, |error| tracing::warn!(%error, event = %event, slot, "release failed, retrying")).await;
            if released.is_none() {
                tracing::error!(event = %event, slot, user = user_id, "could not release the slot; healing will give it back");
            }
        });
        false
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

/// What `find_stock` found.
enum Stock {
    /// `source` granted this stock to the empty shard.
    Granted(u16, Grant),
    /// No shard has a slot to hand out: sold out everywhere.
    SoldOut { holders_version: i64 },
    /// Another shard's stock is out of reach for now (recovering, being given back, or
    /// taken by other applies while the shards were read): ask again.
    Elsewhere,
}

/// Runs a small Redis write with backoff (20 attempts, about 20 s in all), reporting each
/// failure to `failed`; `None` if it never went through (Redis unreachable throughout).
async fn with_retries<T, F, Fut>(redis: &RedisHandle, mut call: F, failed: impl Fn(&RedisError)) -> Option<T>
where
    F: FnMut(RedisConnection) -> Fut,
    Fut: std::future::Future<Output = Result<T, RedisError>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    for _ in 0..20 {
        if let Some(conn) = redis.get() {
            match call(conn).await {
                Ok(value) => return Some(value),
                Err(error) => failed(&error),
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
    None
}

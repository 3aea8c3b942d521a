//! The consumer's verification pass, once a second over the provisioned events of its
//! topics: the fencing check for events nobody applies to, the restore of events marked
//! recovering, healing of overdue entries, and the per-event metrics.
//!
//! Both restore and healing need "every record written before time T is in SQL". A drain
//! target gives it without waiting for a quiet topic: the high watermarks of the topic's
//! partitions are read at T (server time, read before them); once the group's committed
//! offsets reach them (a later pass), every record written before T has its row, however
//! many records arrived since.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coupon_core::event::EventId;
use coupon_core::redis::keyspace::{self, EventCounters, EventLayout};
use coupon_core::redis::RedisConnection;

use super::healing::{heal_entries, HEAL_CHUNK};
use super::kafka::{committed_reached, high_watermarks, GroupConsumer, TargetProgress};
use super::recovery::{restore_event, RecoveryError};
use super::writer::BatchWriter;
use crate::metrics::{EventLabel, Metrics};

const KAFKA_TIMEOUT: Duration = Duration::from_secs(5);

/// High watermarks read at `taken_at_ms` (server time) and `taken_at` (this process's
/// monotonic clock).
struct DrainTarget {
    taken_at_ms: i64,
    taken_at: Instant,
    highs: Vec<(i32, i64)>,
}

/// A drain target reached: every record written to the topic before it was taken has its row.
#[derive(Clone, Copy)]
struct Drained {
    at_ms: i64,
    at: Instant,
}

/// An entry of one shard of an event.
type EntryKey = (String, u16, String, i64);

/// The state of the verification passes.
pub struct Verifier {
    /// The topics this consumer reads: events of other topics are other consumers' work.
    topics: HashSet<String>,
    /// How long past a delivery's deadline (or a recovering mark plus the longest lease) the
    /// consumer waits before trusting that the topic holds every record that will ever be
    /// written for it.
    settle: Duration,
    targets: HashMap<String, DrainTarget>,
    /// When this process first saw each entry overdue, and each event recovering, on its
    /// own monotonic clock. Deadlines and marks are Redis server time, which a clock step
    /// can move forward: an entry is healed, and an event restored, only once a drain target
    /// taken `settle` after this process first saw it so is reached. Any delivery under way
    /// when it was first seen had ended by then (`settle` exceeds the longest lease).
    overdue_seen: HashMap<EntryKey, Instant>,
    recovering_seen: HashMap<String, Instant>,
    /// Events whose gauges this consumer exports: those no longer verified (deleted, moved
    /// to another topic) lose theirs, so no alert fires on a stale value.
    exported: HashSet<String>,
}

impl Verifier {
    pub fn new(topics: &[String], settle: Duration) -> Self {
        Self {
            topics: topics.iter().cloned().collect(),
            settle,
            targets: HashMap::new(),
            overdue_seen: HashMap::new(),
            recovering_seen: HashMap::new(),
            exported: HashSet::new(),
        }
    }

    /// The topics grew (a new event's): their events are verified from now on; drain
    /// targets and exported gauges are kept, so a gauge of an event that goes meanwhile is
    /// still removed.
    pub fn set_topics(&mut self, topics: &[String]) {
        self.topics = topics.iter().cloned().collect();
    }

    /// One pass over every provisioned event of this consumer's topics. An event that fails
    /// is logged and the pass goes on with the next.
    pub async fn pass(&mut self, writer: &mut BatchWriter, conn: &mut RedisConnection, consumer: &Arc<GroupConsumer>, metrics: &Metrics) {
        let read = async {
            Ok::<_, coupon_core::redis::RedisError>((keyspace::server_time_ms(conn).await?, keyspace::registered_events(conn).await?))
        };
        let (now_ms, members) = match read.await {
            Ok(read) => read,
            Err(error) => {
                tracing::warn!(%error, "verification pass skipped");
                return;
            }
        };
        let mut drained_at: HashMap<String, Option<Drained>> = HashMap::new();
        let mut seen = HashSet::new();
        for member in members {
            let Ok(event) = member.parse::<EventId>() else {
                let _ = keyspace::unregister(conn, &member).await;
                continue;
            };
            if !writer.serves(&event) {
                continue;
            }
            match self.verify_event(writer, conn, consumer, metrics, &event, now_ms, &mut drained_at).await {
                Ok(true) => {
                    seen.insert(event.to_string());
                }
                Ok(false) => {}
                Err(error) => {
                    // Not verified this time, but still this consumer's: its gauges stay.
                    seen.insert(event.to_string());
                    tracing::warn!(%error, event = %event, "verification of the event incomplete; retried in a second");
                }
            }
        }
        for gone in self.exported.difference(&seen) {
            unexport(metrics, gone);
        }
        self.exported = seen;
    }

    /// Verifies one event; `Ok(false)` when it is not this consumer's to verify (gone, another
    /// topic, not fenced), whose gauges then go.
    #[allow(clippy::too_many_arguments)]
    async fn verify_event(
        &mut self,
        writer: &mut BatchWriter,
        conn: &mut RedisConnection,
        consumer: &Arc<GroupConsumer>,
        metrics: &Metrics,
        event: &EventId,
        now_ms: i64,
        drained_at: &mut HashMap<String, Option<Drained>>,
    ) -> Result<bool, RecoveryError> {
        let Some(counters) = keyspace::counters(conn, event).await? else { return Ok(false) };
        if !self.topics.contains(&counters.topic) {
            return Ok(false);
        }
        let Some(layout) = keyspace::layout(conn, event).await? else { return Ok(false) };
        let Some(recovering) = fence_shards(conn, &layout).await? else { return Ok(false) };
        export(metrics, &event.to_string(), &counters, recovering, now_ms >= counters.end_ms);
        if !recovering && layout.is_sharded() {
            settle_expired_grants(conn, &layout, now_ms).await?;
        }
        if !recovering {
            self.recovering_seen.remove(&event.to_string());
        }
        if !recovering && counters.unwritten == 0 {
            self.forget_overdue(event, None, &[]);
            return Ok(true);
        }
        let drained = match drained_at.get(&counters.topic) {
            Some(known) => *known,
            None => {
                let reached = self.drained_at(consumer, &counters.topic, now_ms).await?;
                drained_at.insert(counters.topic.clone(), reached);
                reached
            }
        };
        let Some(drained) = drained else { return Ok(true) };
        let trusted_until_ms = drained.at_ms - self.settle.as_millis() as i64;
        if recovering {
            let seen = *self.recovering_seen.entry(event.to_string()).or_insert_with(Instant::now);
            if drained.at < seen + self.settle {
                return Ok(true);
            }
            if let Some(report) = restore_event(writer.store(), conn, event, trusted_until_ms).await? {
                self.recovering_seen.remove(&event.to_string());
                writer.forget(event);
                tracing::warn!(event = %event, count = report.count, rows = report.rows, free = report.free, calls = report.calls, longest_call = ?report.longest_call, "restored the event's Redis state from SQL");
            }
            return Ok(true);
        }
        let Some(key) = counters.key(event) else {
            tracing::error!(event = %event, incarnation = ?counters.incarnation, "invalid incarnation in the event's configuration: not healing");
            return Ok(true);
        };
        for shard in layout.shards() {
            let overdue = keyspace::overdue_entries(conn, &layout, shard, trusted_until_ms, HEAL_CHUNK).await?;
            self.forget_overdue(event, Some(shard), &overdue);
            let overdue: Vec<_> = overdue
                .into_iter()
                .filter(|entry| {
                    let key = (event.to_string(), shard, entry.user.clone(), entry.slot);
                    let seen = *self.overdue_seen.entry(key).or_insert_with(Instant::now);
                    drained.at >= seen + self.settle
                })
                .collect();
            if overdue.is_empty() {
                continue;
            }
            let healed = heal_entries(writer.store(), conn, &key, &layout, shard, trusted_until_ms, overdue).await?;
            if healed.healed > 0 || healed.written > 0 {
                tracing::warn!(event = %event, shard, healed = healed.healed, marked_written = healed.written, "settled entries issued but never written");
            }
        }
        Ok(true)
    }

    /// Forgets when entries of `event` (of `shard`, or of every shard) were first seen
    /// overdue, but for those `still` overdue.
    fn forget_overdue(&mut self, event: &EventId, shard: Option<u16>, still: &[keyspace::OverdueEntry]) {
        let name = event.to_string();
        self.overdue_seen.retain(|(seen_event, seen_shard, user, slot), _| {
            *seen_event != name
                || shard.is_some_and(|shard| shard != *seen_shard)
                || still.iter().any(|entry| entry.user == *user && entry.slot == *slot)
        });
    }

    /// `Some`: every record written to `topic` before the returned time is in SQL. Takes a
    /// new target whenever the previous one is reached (or there is none).
    async fn drained_at(&mut self, consumer: &Arc<GroupConsumer>, topic: &str, now_ms: i64) -> Result<Option<Drained>, RecoveryError> {
        let mut reached = None;
        if let Some(target) = self.targets.get(topic) {
            let (probe, name, highs) = (consumer.clone(), topic.to_owned(), target.highs.clone());
            match tokio::task::spawn_blocking(move || committed_reached(&probe, &name, &highs, KAFKA_TIMEOUT)).await?? {
                TargetProgress::Reached => reached = Some(Drained { at_ms: target.taken_at_ms, at: target.taken_at }),
                TargetProgress::NotYet => return Ok(None),
                TargetProgress::Stale => tracing::warn!(topic, "drain target no longer matches the topic; taking a new one"),
            }
        }
        let (probe, name) = (consumer.clone(), topic.to_owned());
        // Before the watermarks are read: they are read at this instant or later.
        let taken_at = Instant::now();
        let highs = tokio::task::spawn_blocking(move || high_watermarks(&probe, &name, KAFKA_TIMEOUT)).await??;
        self.targets.insert(topic.to_owned(), DrainTarget { taken_at_ms: now_ms, taken_at, highs });
        Ok(reached)
    }
}

/// The fencing check on every shard. A sharded event is restored as a whole, so once one
/// shard is recovering every shard is marked too. `None`: not provisioned.
async fn fence_shards(conn: &mut RedisConnection, layout: &EventLayout) -> Result<Option<bool>, RecoveryError> {
    let mut recovering = false;
    for shard in layout.shards() {
        match keyspace::fence(conn, layout, shard, false).await? {
            Some(state) => recovering |= state,
            None if shard == 0 => return Ok(None),
            // A shard without configuration (lost while the home shard kept its own): the
            // operator writes it back recovering.
            None => recovering = true,
        }
    }
    if recovering && layout.is_sharded() {
        for shard in layout.shards() {
            keyspace::fence(conn, layout, shard, true).await?;
        }
    }
    Ok(Some(recovering))
}

/// Grants between shards whose deadline passed unsettled (an api that died between the
/// grant and the gate call carrying it): decided on their target for good, then settled on
/// their source, the slots back in its stock when the target never took them.
async fn settle_expired_grants(conn: &mut RedisConnection, layout: &EventLayout, now_ms: i64) -> Result<(), RecoveryError> {
    for source in layout.shards() {
        for (id, target) in keyspace::expired_grants(conn, layout, source, now_ms, HEAL_CHUNK).await? {
            if target >= layout.shard_count() {
                continue;
            }
            let Some(verdict) = keyspace::close_grant(conn, layout, target, &id).await? else { continue };
            keyspace::settle_grant(conn, layout, source, &id, verdict).await?;
            tracing::warn!(event = %layout.event(), source, target, grant = id, ?verdict, "settled a grant between shards that nobody settled");
        }
    }
    Ok(())
}

fn export(metrics: &Metrics, event: &str, counters: &EventCounters, recovering: bool, closed: bool) {
    let label = EventLabel { event: event.to_owned() };
    metrics.event_closed.get_or_create(&label).set(i64::from(closed));
    metrics.event_issued.get_or_create(&label).set(counters.issued);
    metrics.event_persisted.get_or_create(&label).set(counters.persisted);
    metrics.event_unwritten.get_or_create(&label).set(counters.unwritten);
    metrics.event_healed.get_or_create(&label).set(counters.healed);
    metrics.event_recovering.get_or_create(&label).set(i64::from(recovering));
}

fn unexport(metrics: &Metrics, event: &str) {
    let label = EventLabel { event: event.to_owned() };
    for family in [
        &metrics.event_issued,
        &metrics.event_persisted,
        &metrics.event_unwritten,
        &metrics.event_healed,
        &metrics.event_recovering,
        &metrics.event_closed,
    ] {
        family.remove(&label);
    }
}

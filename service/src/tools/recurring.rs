//! `coupon-service event create NAME --every CRON --time-zone ZONE ...`: a recurring event
//! without Kubernetes.
//!
//! Each run provisions the occurrence in effect (under way, or else the next) as a sale of
//! its own, keyed `<namespace>/<name>@o<start in seconds since the epoch>`, as the operator
//! keys a recurring CouponEvent's occurrences. When Redis holds the occurrence before, it is
//! removed first, and only once it is over and every coupon of it is written to SQL;
//! otherwise the run refuses and changes nothing. Something must run it for each
//! occurrence: `--follow` keeps running and does, or a timer runs it (the operator does it
//! for CouponEvents).

use std::time::Duration;

use coupon_core::event::recurrence::{format_window, Bound, Occurrence, Recurrence};
use coupon_core::event::{occurrence_incarnation, split_occurrence, EventConfig, EventId, EventKey};
use coupon_core::provision;
use coupon_core::redis::keyspace::{self, Retirement};
use coupon_core::redis::RedisConnection;
use jiff::Timestamp;

use super::event::EventCreateArgs;

/// How often `--follow` looks again while the occurrence before is still being written.
const FOLLOW_RETRY: Duration = Duration::from_secs(5);

/// Why a recurring `event create` does nothing now.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecurringRefusal {
    #[error("--every needs --time-zone (an IANA name such as Asia/Seoul)")]
    TimeZoneNeeded,
    #[error("--count needs --from: occurrences are counted from it, the same on every run")]
    CountNeedsFrom,
    #[error("event {0} exists as an event of one window: delete it (event delete) before making it recur")]
    NotRecurring(String),
    #[error("event {event}: the occurrence before ({occurrence}) {why}; run again once it is")]
    PreviousNotFinished { event: String, occurrence: String, why: &'static str },
    #[error(
        "event {event} has {coupons} coupons in SQL under {key} but no state in Redis: Redis lost this occurrence, and provisioning it again would hand its coupons out a second time"
    )]
    LostOccurrence { event: String, key: String, coupons: i64 },
}

/// The recurrence `args` describe.
pub fn recurrence(args: &EventCreateArgs, every: &str) -> anyhow::Result<Recurrence> {
    let zone = args.time_zone.as_deref().ok_or(RecurringRefusal::TimeZoneNeeded)?;
    let duration = args.duration.unwrap_or(Duration::from_secs(30 * 60));
    let bound = match (args.count, args.until) {
        (Some(_), _) if args.from.is_none() => return Err(RecurringRefusal::CountNeedsFrom.into()),
        (Some(count), _) => Bound::Count(count),
        (None, Some(until)) => Bound::Until(until),
        (None, None) => Bound::Forever,
    };
    Ok(Recurrence::new(every, zone, duration, bound, args.from.unwrap_or(Timestamp::MIN), Duration::ZERO)?)
}

/// One run: the occurrence in effect at `now` provisioned, the one before retired first.
/// `None`: every occurrence is over.
pub async fn create_occurrence(
    args: &EventCreateArgs,
    recurrence: &Recurrence,
    conn: &mut RedisConnection,
    now: Timestamp,
) -> anyhow::Result<Option<(Occurrence, EventKey)>> {
    let id = EventId::new(&args.event.namespace, &args.event.name)?;
    let Some(occurrence) = recurrence.in_effect(now, Duration::ZERO, Duration::ZERO) else { return Ok(None) };
    let incarnation = occurrence_incarnation(None, occurrence.id());
    let key = EventKey::new(id.clone(), Some(&incarnation))?;
    let existing = keyspace::counters(conn, &id).await?;
    let mut topic = args.topic.clone();
    let mut shards = args.shards;
    let mut fresh = true;
    if let Some(existing) = &existing {
        let (base, held) = existing.incarnation.as_deref().map_or((None, None), split_occurrence);
        let Some(held) = held.filter(|_| base.is_none()) else { return Err(RecurringRefusal::NotRecurring(id.to_string()).into()) };
        topic = topic.or_else(|| Some(existing.topic.clone()));
        shards = shards.or(keyspace::layout(conn, &id).await?.map(|layout| layout.shard_count()));
        if held == occurrence.id() {
            fresh = false;
        } else {
            let why = match keyspace::retire_event(conn, &id, existing.incarnation.as_deref()).await? {
                Retirement::Removed | Retirement::Absent => None,
                Retirement::StillOpen => Some("is still open"),
                Retirement::Unwritten => Some("has coupons not written to SQL yet"),
                Retirement::Recovering => Some("is being verified against SQL"),
                Retirement::OtherIncarnation => Some("changed while being removed"),
            };
            if let Some(why) = why {
                let at = Timestamp::from_second(held).map(|t| t.to_string()).unwrap_or_else(|_| held.to_string());
                return Err(RecurringRefusal::PreviousNotFinished { event: id.to_string(), occurrence: at, why }.into());
            }
        }
    }
    if fresh {
        // New to Redis: new indeed, unless SQL holds coupons of this very occurrence.
        if let Some(url) = args.database_url.as_deref() {
            let store = crate::sql::Store::connect(url).await?;
            if let Some((key, coupons)) = store.coupon_keys_of(&id.to_string()).await?.into_iter().find(|(k, _)| *k == key.to_string()) {
                return Err(RecurringRefusal::LostOccurrence { event: id.to_string(), key, coupons }.into());
            }
        } else {
            return Err(super::event::CreateRefusal::DatabaseNeeded(id.to_string()).into());
        }
    }
    let config = EventConfig {
        limit: args.limit.ok_or_else(|| super::event::CreateRefusal::LimitNeeded(id.to_string()))?,
        per_user: args.per_user.unwrap_or(1),
        start: occurrence.start,
        end: occurrence.end,
        topic: topic.unwrap_or_else(|| "coupon_create".into()),
        paused: false,
        incarnation: Some(incarnation),
        shards: shards.unwrap_or(1),
    };
    config.validate()?;
    let admin = args.kafka.settings()?.admin()?;
    admin.ensure_topic(&config.topic, args.partitions, args.replication).await?;
    provision::provision_redis(conn, &id, &config, false).await?;
    Ok(Some((occurrence, key)))
}

/// `event create --every`: one run, or with `--follow` one per occurrence until the last.
pub async fn create(args: EventCreateArgs, every: &str, conn: &mut RedisConnection) -> anyhow::Result<()> {
    let recurrence = recurrence(&args, every)?;
    loop {
        let now = Timestamp::now();
        match create_occurrence(&args, &recurrence, conn, now).await {
            Ok(Some((occurrence, key))) => {
                println!(
                    "{}",
                    serde_json::json!({"event": key.id().to_string(), "key": key.to_string(), "window": format_window(&occurrence, recurrence.zone())})
                );
                if !args.follow {
                    return Ok(());
                }
                // Until it ends; then the next one replaces it.
                let left = occurrence.end.duration_since(Timestamp::now()).as_millis().max(0) as u64;
                tokio::time::sleep(Duration::from_millis(left + 1)).await;
            }
            Ok(None) => {
                println!("{}", serde_json::json!({"event": format!("{}/{}", args.event.namespace, args.event.name), "over": true}));
                return Ok(());
            }
            Err(error) if args.follow && waits(&error) => {
                tracing::info!(%error, "waiting for the occurrence before");
                tokio::time::sleep(FOLLOW_RETRY).await;
            }
            // Redis or Kafka out of reach: `--follow` runs for days, and tries again.
            Err(error) if args.follow && !refused(&error) => {
                tracing::warn!(%error, "cannot provision the occurrence now; trying again");
                tokio::time::sleep(FOLLOW_RETRY).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// The occurrence before is not finished yet: later it will be.
fn waits(error: &anyhow::Error) -> bool {
    error.downcast_ref::<RecurringRefusal>().is_some_and(|r| matches!(r, RecurringRefusal::PreviousNotFinished { .. }))
}

/// What was asked cannot be done (bad input, a lost occurrence, a state that forbids it):
/// trying again changes nothing.
fn refused(error: &anyhow::Error) -> bool {
    error.downcast_ref::<RecurringRefusal>().is_some()
        || error.downcast_ref::<super::event::CreateRefusal>().is_some()
        || error.downcast_ref::<coupon_core::event::InvalidConfig>().is_some()
        || error.downcast_ref::<coupon_core::event::recurrence::RecurrenceError>().is_some()
        || error.downcast_ref::<coupon_core::event::EventKeyError>().is_some()
        || error.downcast_ref::<coupon_core::event::EventIdError>().is_some()
        || matches!(
            error.downcast_ref::<coupon_core::provision::ProvisionError>(),
            Some(coupon_core::provision::ProvisionError::Invalid(_))
        )
}

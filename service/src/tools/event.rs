//! `coupon-service event ...`: events without Kubernetes.
//!
//! `event create` must know whether the event it is asked for existed. Re-run on an existing
//! event, it changes what is given and keeps the rest (a topic or window left out is not a
//! request to go back to the defaults), and refuses what the event's state forbids. Run for
//! an event Redis does not hold, it asks SQL whether the event has coupons: if so, Redis lost
//! it, and starting it again from zero would hand its coupons out a second time. Then it
//! refuses unless told `--recover` (the configuration written back marked recovering: the
//! consumer restores the counts from SQL, as it does for the operator's events) or
//! `--new-incarnation` (a new event, its records and rows keyed apart, as a re-created
//! CouponEvent is). What SQL cannot tell: an event lost before the consumer wrote any of its
//! coupons (they are still on the topic). When in doubt, `--recover`: the restore waits for
//! the topic to be drained.

use std::time::Duration;

use clap::{Args, Subcommand};
use coupon_core::event::{EventConfig, EventId, EventKey};
use coupon_core::provision;
use coupon_core::redis::keyspace::{self, EventCounters};
use coupon_core::redis::RedisHandle;
use jiff::{SignedDuration, Timestamp};

use super::cli::{KafkaArgs, RedisArgs};

#[derive(Subcommand, Debug)]
pub enum EventCommand {
    /// Create an event, or change the given settings of an existing one (the rest are kept):
    /// Kafka topic first, then the Redis configuration. Counters are never reset. For an
    /// event Redis does not hold, SQL is asked whether it had coupons (--database-url).
    Create(Box<EventCreateArgs>),
    /// Print an event's configuration and counters as JSON.
    Show(EventRef),
    /// Remove an event's Redis keys (and with --delete-topic its topic).
    Delete(EventDeleteArgs),
    /// Write an event's coupons out of SQL, by slot, as CSV or JSON Lines (constant memory at
    /// any size).
    Export(super::export::EventExportArgs),
    /// Print the next windows of a recurring schedule, one per line as `START END` in RFC
    /// 3339 with the zone's offset (no Redis, Kafka or SQL needed).
    Plan(super::plan::EventPlanArgs),
}

#[derive(Args, Debug)]
pub struct EventRef {
    /// Event name.
    pub name: String,
    #[arg(long, env = "COUPON_NAMESPACE", default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub redis: RedisArgs,
}

#[derive(Args, Debug)]
pub struct EventCreateArgs {
    #[command(flatten)]
    pub event: EventRef,
    /// Coupons to hand out; needed for a new event.
    #[arg(long)]
    pub limit: Option<i64>,
    /// Coupons per user (1 to 100; default 1 for a new event), each its own slot and row.
    #[arg(long)]
    pub per_user: Option<i64>,
    /// Opening time, RFC 3339; default now for a new event.
    #[arg(long, conflicts_with = "every")]
    pub start: Option<Timestamp>,
    /// Closing time, RFC 3339; default start + --duration.
    #[arg(long, conflicts_with = "every")]
    pub end: Option<Timestamp>,
    /// A recurring event: a five-field cron rule in --time-zone's local time
    /// (`0 10 * * MON-FRI`), each match a window of --duration and a sale of --limit coupons
    /// of its own. Each run provisions the occurrence under way (or the next), once the one
    /// before is over and written; --follow keeps running for each.
    #[arg(long)]
    pub every: Option<String>,
    /// The IANA time zone --every is read in (`Asia/Seoul`).
    #[arg(long, requires = "every")]
    pub time_zone: Option<String>,
    /// With --every: occurrences start at or after this instant (RFC 3339).
    #[arg(long, requires = "every")]
    pub from: Option<Timestamp>,
    /// With --every and --from: this many occurrences (1 to 1000).
    #[arg(long, requires = "every", conflicts_with = "until")]
    pub count: Option<u32>,
    /// With --every: no occurrence starts after this instant (RFC 3339).
    #[arg(long, requires = "every")]
    pub until: Option<Timestamp>,
    /// With --every: keep running, provisioning each occurrence as the one before ends and
    /// is written, until the last.
    #[arg(long, requires = "every")]
    pub follow: bool,
    /// The window's length when --end is not given (default 30m for a new event); with
    /// --every, each occurrence's.
    #[arg(long, value_parser = coupon_core::time::parse_duration)]
    pub duration: Option<Duration>,
    /// Kafka topic; default coupon_create for a new event. An existing event's topic cannot
    /// change (its records would be split across two topics).
    #[arg(long)]
    pub topic: Option<String>,
    /// Partitions of the topic when it is created.
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,
    #[arg(long, default_value_t = 1)]
    pub replication: i32,
    /// Redis shards the quota is spread over (on different masters of a Redis Cluster);
    /// fixed once the event exists. Default 1 for a new event.
    #[arg(long)]
    pub shards: Option<u16>,
    /// SQL database the event's coupons are written to: asked, for an event Redis does not
    /// hold, whether it had coupons (then Redis lost it).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The event had coupons but Redis lost it: write its configuration back marked
    /// recovering (applies answer 503 until the consumer has restored it from SQL).
    #[arg(long, conflicts_with_all = ["new_incarnation", "every"])]
    pub recover: bool,
    /// The event had coupons but Redis lost it: start a new event under the same name, its
    /// records and rows keyed apart (`<namespace>/<name>@<incarnation>`).
    #[arg(long, conflicts_with = "every")]
    pub new_incarnation: bool,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

#[derive(Args, Debug)]
pub struct EventDeleteArgs {
    #[command(flatten)]
    pub event: EventRef,
    /// Also delete the Kafka topic.
    #[arg(long)]
    pub delete_topic: bool,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// Why `event create` does nothing.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CreateRefusal {
    #[error("--limit is needed to create event {0}")]
    LimitNeeded(String),
    #[error("the window would end past the year 9999: give an earlier --end or a shorter --duration")]
    TooLong,
    #[error("event {event}: topic cannot change from {from} to {to}: its records would be split across two topics")]
    TopicChange { event: String, from: String, to: String },
    #[error("event {event}: shards cannot change from {from} to {to}: users are assigned to shards by it")]
    ShardsChange { event: String, from: u16, to: u16 },
    #[error(
        "event {0} is not in Redis: give --database-url (or DATABASE_URL) so that SQL can tell a new event from one whose Redis state was lost"
    )]
    DatabaseNeeded(String),
    #[error(
        "event {event} has {coupons} coupons in SQL (under {key}) but no state in Redis: Redis lost it, and creating it again would hand its coupons out a second time. \
         --recover writes it back marked recovering (the consumer restores it from SQL); --new-incarnation starts a new event keyed apart"
    )]
    LostState { event: String, key: String, coupons: i64 },
    #[error("event {0} exists in Redis: --recover and --new-incarnation are for an event Redis lost")]
    NotLost(String),
    #[error("event {0} has no coupons in SQL: nothing to recover")]
    NothingToRecover(String),
    #[error("--recover needs the event's own --topic, --start and --end (Redis lost them): the defaults of a new event would restore {0} from the wrong topic or reopen a closed sale")]
    RecoverNeedsSettings(String),
    #[error("cannot read the coupons in {url} ({error}): is it the consumer's database? Without it, a new event cannot be told from one Redis lost")]
    NotTheCouponDatabase { url: String, error: String },
}

/// What the event's state in Redis says of the settings it keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Existing {
    pub limit: i64,
    pub per_user: i64,
    pub start: Timestamp,
    pub end: Timestamp,
    pub topic: String,
    pub shards: u16,
    pub incarnation: Option<String>,
}

impl Existing {
    fn of(counters: &EventCounters, shards: u16) -> Self {
        let at = coupon_core::time::timestamp_from_millis_clamped;
        Self {
            limit: counters.limit,
            per_user: counters.per_user,
            start: at(counters.start_ms),
            end: at(counters.end_ms),
            topic: counters.topic.clone(),
            shards,
            incarnation: counters.incarnation.clone(),
        }
    }
}

/// The configuration `args` asks for: over an existing event, what is given changes and the
/// rest is kept; for a new one, the defaults fill in. Pure.
pub fn requested_config(args: &EventCreateArgs, existing: Option<&Existing>, now: Timestamp) -> Result<EventConfig, CreateRefusal> {
    let event = format!("{}/{}", args.event.namespace, args.event.name);
    let window = |start: Timestamp, default_length: SignedDuration| match args.end {
        Some(end) => Ok(end),
        None => {
            let length = args.duration.map_or(Ok(default_length), SignedDuration::try_from).map_err(|_| CreateRefusal::TooLong)?;
            start.checked_add(length).map_err(|_| CreateRefusal::TooLong)
        }
    };
    match existing {
        Some(existing) => {
            if let Some(topic) = args.topic.as_ref().filter(|t| **t != existing.topic) {
                return Err(CreateRefusal::TopicChange { event, from: existing.topic.clone(), to: topic.clone() });
            }
            if let Some(shards) = args.shards.filter(|s| *s != existing.shards) {
                return Err(CreateRefusal::ShardsChange { event, from: existing.shards, to: shards });
            }
            let start = args.start.unwrap_or(existing.start);
            // A new start or length moves the window; neither given keeps its end.
            let end = if args.start.is_none() && args.duration.is_none() {
                args.end.unwrap_or(existing.end)
            } else {
                window(start, existing.end.duration_since(existing.start))?
            };
            Ok(EventConfig {
                limit: args.limit.unwrap_or(existing.limit),
                per_user: args.per_user.unwrap_or(existing.per_user),
                start,
                end,
                topic: existing.topic.clone(),
                paused: false,
                incarnation: existing.incarnation.clone(),
                shards: existing.shards,
            })
        }
        None => {
            let limit = args.limit.ok_or_else(|| CreateRefusal::LimitNeeded(event.clone()))?;
            let start = args.start.unwrap_or(now);
            Ok(EventConfig {
                limit,
                per_user: args.per_user.unwrap_or(1),
                start,
                end: window(start, SignedDuration::from_mins(30))?,
                topic: args.topic.clone().unwrap_or_else(|| "coupon_create".into()),
                paused: false,
                incarnation: None,
                shards: args.shards.unwrap_or(1),
            })
        }
    }
}

pub async fn run(command: EventCommand) -> anyhow::Result<()> {
    let deadline = Duration::from_secs(10);
    match command {
        EventCommand::Create(args) => create(*args, deadline).await?,
        EventCommand::Export(args) => super::export::run(args).await?,
        EventCommand::Plan(args) => super::plan::run(args, &mut std::io::stdout().lock())?,
        EventCommand::Show(args) => {
            let id = EventId::new(&args.namespace, &args.name)?;
            let mut conn = RedisHandle::connect_with_deadline(args.redis.target(), deadline).await?;
            match keyspace::counters(&mut conn, &id).await? {
                Some(counters) => println!("{}", serde_json::to_string_pretty(&counters)?),
                None => anyhow::bail!("event {id} is not provisioned"),
            }
        }
        EventCommand::Delete(args) => {
            let id = EventId::new(&args.event.namespace, &args.event.name)?;
            let mut conn = RedisHandle::connect_with_deadline(args.event.redis.target(), deadline).await?;
            let topic = keyspace::counters(&mut conn, &id).await?.map(|c| c.topic);
            let removed = provision::delete_redis(&mut conn, &id).await?;
            if args.delete_topic {
                if let Some(topic) = topic.filter(|t| !t.is_empty()) {
                    args.kafka.settings()?.admin()?.delete_topic(&topic).await?;
                }
            }
            println!("{}", serde_json::json!({"event": id.to_string(), "keysRemoved": removed}));
        }
    }
    Ok(())
}

async fn create(args: EventCreateArgs, deadline: Duration) -> anyhow::Result<()> {
    let id = EventId::new(&args.event.namespace, &args.event.name)?;
    let mut conn = RedisHandle::connect_with_deadline(args.event.redis.target(), deadline).await?;
    if let Some(every) = args.every.clone() {
        return super::recurring::create(args, &every, &mut conn).await;
    }
    let existing = match keyspace::counters(&mut conn, &id).await? {
        Some(counters) => {
            let shards = keyspace::layout(&mut conn, &id).await?.map_or(1, |layout| layout.shard_count());
            Some(Existing::of(&counters, shards))
        }
        None => None,
    };
    if existing.is_some() && (args.recover || args.new_incarnation) {
        return Err(CreateRefusal::NotLost(id.to_string()).into());
    }
    let mut config = requested_config(&args, existing.as_ref(), Timestamp::now())?;
    let mut lost = false;
    if existing.is_none() {
        // A new event, or one Redis lost? SQL knows.
        let url = args.database_url.as_deref().ok_or_else(|| CreateRefusal::DatabaseNeeded(id.to_string()))?;
        let store = crate::sql::Store::connect(url).await?;
        // Read only: a database without the consumer's tables is not the one the coupons go
        // to (a wrong URL), and saying "no coupons" from it could start a lost event again.
        let keys = store.coupon_keys_of(&id.to_string()).await.map_err(|error| CreateRefusal::NotTheCouponDatabase {
            url: coupon_core::secrets::redact_url(url),
            error: error.to_string(),
        })?;
        match (keys.first(), args.recover, args.new_incarnation) {
            (None, true, _) => return Err(CreateRefusal::NothingToRecover(id.to_string()).into()),
            (None, false, _) => {}
            (Some((key, coupons)), false, false) => {
                return Err(CreateRefusal::LostState { event: id.to_string(), key: key.clone(), coupons: *coupons }.into())
            }
            (Some((key, _)), true, _) => {
                // The same sale, under the key its latest coupons carry, with its own topic and
                // window: the defaults of a new event would restore from the wrong topic or
                // reopen a closed sale.
                if args.topic.is_none() || args.start.is_none() || args.end.is_none() {
                    return Err(CreateRefusal::RecoverNeedsSettings(id.to_string()).into());
                }
                config.incarnation = key.parse::<EventKey>()?.incarnation().map(str::to_owned);
                lost = true;
            }
            (Some(_), false, true) => config.incarnation = Some(new_incarnation()),
        }
    }
    config.validate()?;
    let admin = args.kafka.settings()?.admin()?;
    let topic = admin.ensure_topic(&config.topic, args.partitions, args.replication).await?;
    let redis = provision::provision_redis(&mut conn, &id, &config, lost).await?;
    let key = EventKey::new(id.clone(), config.incarnation.as_deref())?;
    println!(
        "{}",
        serde_json::json!({"event": id.to_string(), "key": key.to_string(), "topic": format!("{topic:?}"), "redis": format!("{redis:?}")})
    );
    Ok(())
}

/// A fresh incarnation: 32 hex digits from the clock and the process, unique enough that no
/// two runs share one, and valid as an event key's incarnation (`[a-z0-9-]`).
fn new_incarnation() -> String {
    use std::hash::{BuildHasher, Hasher};
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    format!("{:016x}{:016x}", nanos as u64, hasher.finish())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Wrapper {
        #[command(subcommand)]
        command: EventCommand,
    }

    fn create_args(line: &[&str]) -> EventCreateArgs {
        let mut argv = vec!["coupon-service", "create", "sale"];
        argv.extend_from_slice(line);
        match Wrapper::parse_from(argv).command {
            EventCommand::Create(args) => *args,
            _ => unreachable!(),
        }
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn existing() -> Existing {
        Existing {
            limit: 100,
            per_user: 1,
            start: t("2026-11-27T10:00:00Z"),
            end: t("2026-11-27T10:30:00Z"),
            topic: "sale.topic".into(),
            shards: 2,
            incarnation: None,
        }
    }

    #[test]
    fn over_an_existing_event_what_is_not_given_is_kept() {
        let now = t("2026-11-27T09:00:00Z");
        let raised = requested_config(&create_args(&["--limit", "150"]), Some(&existing()), now).unwrap();
        assert_eq!(
            (raised.limit, raised.topic.as_str(), raised.start, raised.end, raised.shards),
            (150, "sale.topic", existing().start, existing().end, 2)
        );
        let moved = requested_config(&create_args(&["--start", "2026-11-27T11:00:00Z"]), Some(&existing()), now).unwrap();
        assert_eq!(
            (moved.start, moved.end, moved.limit),
            (t("2026-11-27T11:00:00Z"), t("2026-11-27T11:30:00Z"), 100),
            "the window's length kept"
        );
        let ended = requested_config(&create_args(&["--end", "2026-11-27T10:45:00Z"]), Some(&existing()), now).unwrap();
        assert_eq!((ended.start, ended.end), (existing().start, t("2026-11-27T10:45:00Z")));
        let same_topic = requested_config(&create_args(&["--topic", "sale.topic"]), Some(&existing()), now).unwrap();
        assert_eq!(same_topic.topic, "sale.topic");
    }

    #[test]
    fn what_the_events_state_forbids_is_refused() {
        let now = t("2026-11-27T09:00:00Z");
        assert!(matches!(
            requested_config(&create_args(&["--topic", "coupon_create"]), Some(&existing()), now),
            Err(CreateRefusal::TopicChange { .. })
        ));
        assert!(matches!(
            requested_config(&create_args(&["--shards", "1"]), Some(&existing()), now),
            Err(CreateRefusal::ShardsChange { .. })
        ));
        assert_eq!(requested_config(&create_args(&[]), None, now), Err(CreateRefusal::LimitNeeded("default/sale".into())));
        assert_eq!(
            requested_config(&create_args(&["--limit", "1", "--start", "9999-12-01T00:00:00Z", "--duration", "2000h"]), None, now),
            Err(CreateRefusal::TooLong),
            "a window past jiff's last instant is refused, not wrapped or panicked on"
        );
    }

    #[test]
    fn a_new_event_gets_the_defaults() {
        let now = t("2026-11-27T09:00:00Z");
        let new = requested_config(&create_args(&["--limit", "10"]), None, now).unwrap();
        assert_eq!(
            (new.topic.as_str(), new.start, new.end, new.shards, new.per_user),
            ("coupon_create", now, t("2026-11-27T09:30:00Z"), 1, 1)
        );
    }

    #[test]
    fn a_new_incarnation_is_a_valid_key_part_and_new_each_time() {
        let (a, b) = (new_incarnation(), new_incarnation());
        assert_ne!(a, b);
        let id = EventId::new("shop", "sale").unwrap();
        assert!(EventKey::new(id, Some(&a)).is_ok(), "{a}");
    }
}

//! Provisioning an event: its Redis configuration and its Kafka topic.
//!
//! The local CLI (`coupon-service event create`) and the operator call this same code.
//! Provisioning never resets a counter: counters, the user set and the free list belong to
//! the running event; only the configuration hash is written here.

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use redis::Script;

use crate::event_id::EventId;
use crate::kafka::{TopicAdmin, TopicOutcome};

/// What an event is: how many coupons, to whom, when, and on which topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventConfig {
    pub limit: i64,
    pub per_user: i64,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub topic: String,
}

/// A specification that must not be provisioned.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidConfig {
    #[error("limit must be at least 1, got {0}")]
    Limit(i64),
    #[error("perUserLimit must be at least 1, got {0}")]
    PerUser(i64),
    #[error("perUserLimit {0} is not supported yet: the SQL schema holds one coupon per user and event")]
    PerUserAboveOne(i64),
    #[error("end ({end}) must be after start ({start})")]
    Window { start: DateTime<Utc>, end: DateTime<Utc> },
    #[error("topic name {0:?} is not a valid Kafka topic name (1..=249 of [a-zA-Z0-9._-], not '.' or '..')")]
    Topic(String),
    #[error("limit {limit} is below the {issued} slots already handed out")]
    LimitBelowIssued { limit: i64, issued: i64 },
}

/// Kafka's own rule for topic names.
pub fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl EventConfig {
    /// An event open from a few seconds ago for `duration`, one coupon per user (the demo,
    /// the benchmarks and the tests).
    pub fn open_now(limit: i64, topic: &str, duration: std::time::Duration) -> Self {
        let now = Utc::now();
        Self {
            limit,
            per_user: 1,
            start: now - chrono::Duration::seconds(5),
            end: now + chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::hours(1)),
            topic: topic.to_owned(),
        }
    }

    /// Checks what can be checked without live state.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if self.limit < 1 {
            return Err(InvalidConfig::Limit(self.limit));
        }
        if self.per_user < 1 {
            return Err(InvalidConfig::PerUser(self.per_user));
        }
        if self.per_user > 1 {
            return Err(InvalidConfig::PerUserAboveOne(self.per_user));
        }
        if self.end <= self.start {
            return Err(InvalidConfig::Window { start: self.start, end: self.end });
        }
        if !valid_topic_name(&self.topic) {
            return Err(InvalidConfig::Topic(self.topic.clone()));
        }
        Ok(())
    }
}

/// What provisioning did to Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisOutcome {
    Created,
    Updated,
    Unchanged,
    /// The configuration of an event known to have existed was missing (Redis lost its
    /// data): it was written back marked `recovering`, so the gate answers 503 until the
    /// consumer has restored the counters from SQL.
    CreatedRecovering,
}

/// Events whose Redis state is being restored from SQL (members `<ns>/<name>`).
pub const RECOVERING_SET: &str = "coupon:recovering";

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(transparent)]
    Invalid(#[from] InvalidConfig),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// KEYS: config, count. ARGV: limit, per_user, start_ms, end_ms, topic, recover_if_missing.
/// Answers 0 created, 1 updated, 2 unchanged, 3 created recovering, or -count when the new
/// limit is below the highest slot handed out (nothing is written then).
const PROVISION_LUA: &str = r#"
local count = tonumber(redis.call('GET', KEYS[2])) or 0
if tonumber(ARGV[1]) < count then return -count end
local old = redis.call('HMGET', KEYS[1], 'limit', 'per_user', 'start_ms', 'end_ms', 'topic')
if old[1] == ARGV[1] and old[2] == ARGV[2] and old[3] == ARGV[3] and old[4] == ARGV[4] and old[5] == ARGV[5] then
  return 2
end
redis.call('HSET', KEYS[1], 'limit', ARGV[1], 'per_user', ARGV[2], 'start_ms', ARGV[3], 'end_ms', ARGV[4], 'topic', ARGV[5])
if old[1] then return 1 end
if ARGV[6] == '1' then
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'recovering', '1', 'recovering_since_ms', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  return 3
end
return 0
"#;

/// Writes the event's configuration atomically. A limit below the slots already handed out
/// is refused, because those coupons exist and cannot be taken back.
pub async fn provision_redis(conn: &mut ConnectionManager, event: &EventId, config: &EventConfig) -> Result<RedisOutcome, ProvisionError> {
    provision_redis_with_recovery(conn, event, config, false).await
}

/// As `provision_redis`; with `existed_before` (the caller knows the event was provisioned
/// earlier), a missing configuration means Redis lost the event's state: it is written back
/// marked `recovering` instead of starting the counters again from zero.
pub async fn provision_redis_with_recovery(
    conn: &mut ConnectionManager,
    event: &EventId,
    config: &EventConfig,
    existed_before: bool,
) -> Result<RedisOutcome, ProvisionError> {
    config.validate()?;
    let keys = event.keys();
    let answer: i64 = Script::new(PROVISION_LUA)
        .key(&keys.config)
        .key(&keys.count)
        .arg(config.limit)
        .arg(config.per_user)
        .arg(config.start.timestamp_millis())
        .arg(config.end.timestamp_millis())
        .arg(&config.topic)
        .arg(if existed_before { "1" } else { "0" })
        .invoke_async(&mut *conn)
        .await?;
    Ok(match answer {
        0 => RedisOutcome::Created,
        1 => RedisOutcome::Updated,
        2 => RedisOutcome::Unchanged,
        3 => {
            // Outside the script: on Redis Cluster this set lives in another slot.
            let _: i64 = redis::cmd("SADD").arg(RECOVERING_SET).arg(event.to_string()).query_async(conn).await?;
            tracing::warn!(event = %event, "event configuration was missing although the event existed: marked recovering");
            RedisOutcome::CreatedRecovering
        }
        negative => return Err(InvalidConfig::LimitBelowIssued { limit: config.limit, issued: -negative }.into()),
    })
}

/// Both halves of provisioning: the topic first, so that the gate never opens for an event
/// whose records have nowhere to go.
pub async fn provision_event(
    conn: &mut ConnectionManager,
    admin: &TopicAdmin,
    event: &EventId,
    config: &EventConfig,
    partitions: i32,
    replication: i32,
) -> Result<(TopicOutcome, RedisOutcome), ProvisionError> {
    config.validate()?;
    let topic = admin.ensure_topic(&config.topic, partitions, replication).await?;
    let redis = provision_redis(conn, event, config).await?;
    Ok((topic, redis))
}

/// Removes every Redis key of the event. Returns how many keys existed.
pub async fn delete_redis(conn: &mut ConnectionManager, event: &EventId) -> Result<i64, ProvisionError> {
    let keys = event.keys();
    let removed: i64 = redis::cmd("DEL").arg(&keys.all()[..]).query_async(conn).await?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> EventConfig {
        EventConfig {
            limit: 100,
            per_user: 1,
            start: "2026-11-27T10:00:00Z".parse().unwrap(),
            end: "2026-11-27T10:30:00Z".parse().unwrap(),
            topic: "coupon_create".into(),
        }
    }

    #[test]
    fn a_sane_config_validates() {
        assert_eq!(config().validate(), Ok(()));
    }

    #[test]
    fn invalid_configs_are_named() {
        assert_eq!(EventConfig { limit: 0, ..config() }.validate(), Err(InvalidConfig::Limit(0)));
        assert_eq!(EventConfig { per_user: 0, ..config() }.validate(), Err(InvalidConfig::PerUser(0)));
        assert_eq!(EventConfig { per_user: 2, ..config() }.validate(), Err(InvalidConfig::PerUserAboveOne(2)));
        let c = config();
        assert!(matches!(EventConfig { end: c.start, ..c.clone() }.validate(), Err(InvalidConfig::Window { .. })));
        assert!(matches!(EventConfig { topic: "a b".into(), ..c }.validate(), Err(InvalidConfig::Topic(_))));
    }

    #[test]
    fn topic_names_follow_kafka() {
        assert!(valid_topic_name("coupon_create"));
        assert!(valid_topic_name("a.b-c_D9"));
        assert!(!valid_topic_name(""));
        assert!(!valid_topic_name("."));
        assert!(!valid_topic_name(".."));
        assert!(!valid_topic_name("a/b"));
        assert!(valid_topic_name(&"a".repeat(249)));
        assert!(!valid_topic_name(&"a".repeat(250)));
    }
}

//! What an event is, independent of where it is stored: how many coupons, to whom, when, and
//! on which topic. The operator builds it from a `CouponEvent` spec, `coupon-service event
//! create` from its flags.

use jiff::{SignedDuration, Timestamp};

/// What an event is: how many coupons, to whom, when, and on which topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventConfig {
    pub limit: i64,
    pub per_user: i64,
    pub start: Timestamp,
    pub end: Timestamp,
    pub topic: String,
    /// Paused: the gate answers `403 paused` at once and issues nothing; the counters stay,
    /// and resuming continues the same event (the emergency stop after a pricing mistake).
    pub paused: bool,
    /// The object this event belongs to (a `CouponEvent`'s UID), written when the event is
    /// created and never changed: records and rows carry it in their event key (see
    /// `EventKey`). `None` for events made without Kubernetes.
    pub incarnation: Option<String>,
    /// How many Redis shards the event's quota is spread over (`1`: one hash tag, on one
    /// master). Fixed when the event is created: users are assigned to shards by it.
    pub shards: u16,
}

/// The most shards an event may have (each is a hash tag on some master; more shards than
/// masters buys nothing).
pub const MAX_SHARDS: u16 = 64;

/// A specification that must not be provisioned.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidConfig {
    #[error("limit must be at least 1, got {0}")]
    Limit(i64),
    #[error("perUserLimit must be 1 to {max}, got {0}", max = super::MAX_PER_USER)]
    PerUser(i64),
    #[error("end ({end}) must be after start ({start})")]
    Window { start: Timestamp, end: Timestamp },
    #[error("topic name {0:?} is not a valid Kafka topic name (1..=249 of [a-zA-Z0-9._-], not '.' or '..', not an internal one starting with '__')")]
    Topic(String),
    #[error("Redis holds the state of another object of this name: it must be drained and removed before this one is provisioned")]
    OtherIncarnation,
    #[error("event key: {0}")]
    Key(#[from] super::EventKeyError),
    #[error("limit {limit} is below the {issued} slots already handed out")]
    LimitBelowIssued { limit: i64, issued: i64 },
    #[error("shards must be 1..={max}, got {0}", max = MAX_SHARDS)]
    Shards(u16),
    #[error("shards cannot change once the event exists (it has {existing}): users are assigned to shards by it")]
    ShardsChanged { existing: u16 },
}

/// Kafka's own rule for topic names.
pub fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        // Kafka's internal topics (`__consumer_offsets`, `__transaction_state`) start so.
        && !topic.starts_with("__")
        && topic.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl EventConfig {
    /// An event open from a few seconds ago for `duration`, one coupon per user (the demo,
    /// the benchmarks and the tests).
    pub fn open_now(limit: i64, topic: &str, duration: std::time::Duration) -> Self {
        let now = Timestamp::now();
        let length = SignedDuration::try_from(duration).unwrap_or(SignedDuration::from_hours(1));
        Self {
            limit,
            per_user: 1,
            start: now - SignedDuration::from_secs(5),
            end: now.checked_add(length).unwrap_or(Timestamp::MAX),
            topic: topic.to_owned(),
            paused: false,
            incarnation: None,
            shards: 1,
        }
    }

    /// Checks what can be checked without live state.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if self.limit < 1 {
            return Err(InvalidConfig::Limit(self.limit));
        }
        if !(1..=super::MAX_PER_USER).contains(&self.per_user) {
            return Err(InvalidConfig::PerUser(self.per_user));
        }
        if self.end <= self.start {
            return Err(InvalidConfig::Window { start: self.start, end: self.end });
        }
        if !valid_topic_name(&self.topic) {
            return Err(InvalidConfig::Topic(self.topic.clone()));
        }
        if self.shards < 1 || self.shards > MAX_SHARDS {
            return Err(InvalidConfig::Shards(self.shards));
        }
        Ok(())
    }
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
            paused: false,
            incarnation: None,
            shards: 1,
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
        assert_eq!(EventConfig { per_user: 101, ..config() }.validate(), Err(InvalidConfig::PerUser(101)));
        assert_eq!(EventConfig { per_user: 100, ..config() }.validate(), Ok(()));
        let c = config();
        assert!(matches!(EventConfig { end: c.start, ..c.clone() }.validate(), Err(InvalidConfig::Window { .. })));
        assert!(matches!(EventConfig { topic: "a b".into(), ..c.clone() }.validate(), Err(InvalidConfig::Topic(_))));
        assert!(matches!(EventConfig { topic: "__consumer_offsets".into(), ..c.clone() }.validate(), Err(InvalidConfig::Topic(_))));
        assert_eq!(EventConfig { shards: 0, ..c.clone() }.validate(), Err(InvalidConfig::Shards(0)));
        assert_eq!(EventConfig { shards: MAX_SHARDS + 1, ..c.clone() }.validate(), Err(InvalidConfig::Shards(MAX_SHARDS + 1)));
        assert_eq!(EventConfig { shards: MAX_SHARDS, ..c }.validate(), Ok(()));
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

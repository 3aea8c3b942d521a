//! The operator's side effects outside Kubernetes: the event's Redis configuration and Kafka
//! topic, through the same provisioning code as `coupon-service event create`.

use coupon_core::event::recurrence::Occurrence;
use coupon_core::event::{EventId, InvalidConfig};
use coupon_core::kafka::{KafkaSettings, TopicAdmin, TopicOutcome};
use coupon_core::provision::{self, ProvisionError, RedisOutcome};
use coupon_core::redis::keyspace::{self, EventCounters};
use coupon_core::redis::{ConnectError, RedisHandle, RedisTarget};
use jiff::Timestamp;

use crate::crd::CouponEventSpec;

/// Redis and Kafka as the operator uses them.
pub struct Backend {
    pub redis: RedisHandle,
    pub admin: TopicAdmin,
    pub replication: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("Redis is not connected yet")]
    RedisNotConnected,
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

impl BackendError {
    /// The spec cannot be applied as it stands (as opposed to a dependency being down).
    pub fn refusal(&self) -> Option<&InvalidConfig> {
        match self {
            Self::Provision(ProvisionError::Invalid(invalid)) => Some(invalid),
            _ => None,
        }
    }
}

impl Backend {
    pub fn new(redis: impl Into<RedisTarget>, kafka: &KafkaSettings, replication: i32) -> Result<Self, BackendError> {
        Ok(Self { redis: RedisHandle::connect_in_background(redis)?, admin: kafka.admin()?, replication })
    }

    /// Topics the operator creates get these configurations (`TOPIC_CONFIG`).
    pub fn with_topic_configs(self, configs: Vec<(String, String)>) -> Self {
        Self { admin: self.admin.with_topic_configs(configs), ..self }
    }

    fn conn(&self) -> Result<coupon_core::redis::RedisConnection, BackendError> {
        self.redis.get().ok_or(BackendError::RedisNotConnected)
    }

    /// Creates the topic if it is missing (an existing topic is kept as it is).
    pub async fn ensure_topic(&self, spec: &CouponEventSpec) -> Result<TopicOutcome, BackendError> {
        Ok(self.admin.ensure_topic(&spec.topic, spec.partitions, self.replication).await?)
    }

    /// Writes the Redis configuration; never touches counters, refuses a limit below them.
    /// `existed_before`: the event was provisioned earlier, so a missing configuration means
    /// Redis lost its state and the event is written back marked recovering.
    /// `incarnation`: what the event's records and rows carry after its name (the
    /// CouponEvent's UID, and for a recurring event the occurrence); `window`: the window or
    /// occurrence provisioned.
    pub async fn provision_redis(
        &self,
        event: &EventId,
        spec: &CouponEventSpec,
        window: &Occurrence,
        existed_before: bool,
        incarnation: Option<&str>,
    ) -> Result<RedisOutcome, BackendError> {
        let config = coupon_core::event::EventConfig { incarnation: incarnation.map(str::to_owned), ..spec.event_config(window) };
        Ok(provision::provision_redis(&mut self.conn()?, event, &config, existed_before).await?)
    }

    /// Other events (`ns/name`, any namespace, also ones this operator does not watch or
    /// that were deleted with `Retain`) still registered in Redis on `topic`.
    pub async fn other_events_on_topic(&self, topic: &str, except: &EventId) -> Result<Vec<String>, BackendError> {
        let mut conn = self.conn()?;
        let mut others = Vec::new();
        for member in keyspace::registered_events(&mut conn).await? {
            let Ok(event) = member.parse::<EventId>() else { continue };
            if &event != except && keyspace::topic(&mut conn, &event).await?.as_deref() == Some(topic) {
                others.push(member);
            }
        }
        Ok(others)
    }

    /// `Retain` on deletion: the sale closes now (the window is moved to end at `now`) while
    /// the counters stay. Returns whether a configuration was there to close.
    pub async fn close_sale(&self, event: &EventId, spec: &CouponEventSpec, now: Timestamp) -> Result<bool, BackendError> {
        let mut conn = self.conn()?;
        let Some(counters) = keyspace::counters(&mut conn, event).await? else { return Ok(false) };
        let now_ms = now.as_millisecond();
        if counters.end_ms <= now_ms {
            return Ok(false);
        }
        let window = Occurrence { start: now, end: now };
        let mut config = spec.event_config(&window);
        // Everything but the window as Redis holds it (the limit there is never below the
        // slots handed out).
        config.limit = counters.limit;
        config.per_user = counters.per_user;
        config.topic = counters.topic.clone();
        config.incarnation = counters.incarnation.clone();
        // Before the end (a window must not be empty), whatever Redis holds.
        let a_second_before = now.checked_sub(jiff::SignedDuration::from_secs(1)).unwrap_or(now);
        config.start = Timestamp::from_millisecond(counters.start_ms.min(now_ms - 1000)).unwrap_or(a_second_before);
        config.end = now;
        provision::provision_redis(&mut conn, event, &config, true).await?;
        Ok(true)
    }

    pub async fn counters(&self, event: &EventId) -> Result<Option<EventCounters>, BackendError> {
        Ok(keyspace::counters(&mut self.conn()?, event).await?)
    }

    /// `onDelete: Delete`: removes the event's Redis keys.
    pub async fn delete_redis(&self, event: &EventId) -> Result<(), BackendError> {
        provision::delete_redis(&mut self.conn()?, event).await?;
        Ok(())
    }

    /// Removes an earlier object's state under the event's name if it is finished (see
    /// `keyspace::retire_event`).
    pub async fn retire(&self, event: &EventId, incarnation: Option<&str>) -> Result<keyspace::Retirement, BackendError> {
        Ok(keyspace::retire_event(&mut self.conn()?, event, incarnation).await?)
    }

    /// Deletes a topic (the caller decided it is safe: see `lifecycle::topic_deletion`).
    pub async fn delete_topic(&self, topic: &str) -> Result<(), BackendError> {
        Ok(self.admin.delete_topic(topic).await?)
    }
}

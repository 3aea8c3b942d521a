//! Provisioning an event: its Kafka topic and its Redis configuration.
//!
//! The local CLI (`coupon-service event create`) and the operator call this same code.
//! Provisioning never resets a counter: counters, the users and the free list belong to the
//! running event; only the configuration is written here.

use crate::redis::RedisConnection;

use crate::event::{EventConfig, EventId, EventKey, InvalidConfig};
use crate::kafka::{KafkaError, TopicAdmin, TopicOutcome};
use crate::redis::keyspace::{self, ConfigWrite};

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

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(transparent)]
    Invalid(#[from] InvalidConfig),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Eviction(#[from] keyspace::EvictionRisk),
}

/// Writes the event's configuration. A limit below the slots already handed out is
/// refused, because those coupons exist and cannot be taken back. With `existed_before`
/// (the caller knows the event was provisioned earlier), a missing configuration means
/// Redis lost the event's state: it is written back marked recovering instead of starting
/// the counters again from zero.
pub async fn provision_redis(
    conn: &mut RedisConnection,
    event: &EventId,
    config: &EventConfig,
    existed_before: bool,
) -> Result<RedisOutcome, ProvisionError> {
    config.validate()?;
    EventKey::new(event.clone(), config.incarnation.as_deref()).map_err(InvalidConfig::Key)?;
    // A Redis that may evict the event's keys would hand coupons out twice: no event is
    // started there. (A configuration Redis lost is still written back, marked recovering:
    // the consumer must be able to restore it, and the api issues nothing while Redis may
    // evict.)
    if !existed_before {
        if let Some(eviction) = keyspace::eviction(conn).await? {
            eviction.check()?;
        }
    }
    Ok(match keyspace::write_config(conn, event, config, existed_before).await? {
        ConfigWrite::Created => RedisOutcome::Created,
        ConfigWrite::Updated => RedisOutcome::Updated,
        ConfigWrite::Unchanged => RedisOutcome::Unchanged,
        ConfigWrite::CreatedRecovering => {
            tracing::warn!(event = %event, "event configuration was missing although the event existed: marked recovering");
            RedisOutcome::CreatedRecovering
        }
        ConfigWrite::RefusedBelowIssued { issued } => return Err(InvalidConfig::LimitBelowIssued { limit: config.limit, issued }.into()),
        ConfigWrite::RefusedOtherIncarnation => return Err(InvalidConfig::OtherIncarnation.into()),
        ConfigWrite::RefusedShardsChanged { existing } => return Err(InvalidConfig::ShardsChanged { existing }.into()),
    })
}

/// Both halves of provisioning: the topic first, so that the gate never opens for an event
/// whose records have nowhere to go.
pub async fn provision_event(
    conn: &mut RedisConnection,
    admin: &TopicAdmin,
    event: &EventId,
    config: &EventConfig,
    partitions: i32,
    replication: i32,
) -> Result<(TopicOutcome, RedisOutcome), ProvisionError> {
    config.validate()?;
    let topic = admin.ensure_topic(&config.topic, partitions, replication).await?;
    let redis = provision_redis(conn, event, config, false).await?;
    Ok((topic, redis))
}

/// Removes every Redis key of the event. Returns how many keys existed.
pub async fn delete_redis(conn: &mut RedisConnection, event: &EventId) -> Result<i64, ProvisionError> {
    Ok(keyspace::delete_event(conn, event).await?)
}

//! Writing an event's configuration hash.

use std::sync::LazyLock;

use redis::aio::ConnectionManager;
use redis::{RedisResult, Script};

use super::{mark_recovering, EventKeys};
use crate::event::{EventConfig, EventId};

static PROVISION: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/provision.lua")));

/// What writing the configuration did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigWrite {
    Created,
    Updated,
    Unchanged,
    /// The configuration of an event known to have existed was missing (Redis lost its
    /// data): it was written back marked `recovering`, so the gate answers 503 until the
    /// consumer has restored the counters from SQL.
    CreatedRecovering,
    /// Nothing written: the new limit is below the `issued` slots already handed out.
    RefusedBelowIssued {
        issued: i64,
    },
}

/// Writes the configuration atomically; counters are never touched. With `existed_before`
/// (the caller knows the event was provisioned earlier) a missing configuration means Redis
/// lost the event's state: it is written back marked recovering and listed for the consumer.
pub async fn write_config(
    conn: &mut ConnectionManager,
    event: &EventId,
    config: &EventConfig,
    existed_before: bool,
) -> RedisResult<ConfigWrite> {
    let keys = EventKeys::of(event);
    let answer: i64 = PROVISION
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
        0 => ConfigWrite::Created,
        1 => ConfigWrite::Updated,
        2 => ConfigWrite::Unchanged,
        3 => {
            // Outside the script: on Redis Cluster the set lives in another slot.
            mark_recovering(conn, event).await?;
            ConfigWrite::CreatedRecovering
        }
        negative => ConfigWrite::RefusedBelowIssued { issued: -negative },
    })
}

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
/// An event still marked recovering is listed again on every write, so one failed listing
/// (it cannot be inside the script: on Redis Cluster the list lives in another slot) does
/// not leave the event answering 503 for ever.
pub async fn write_config(
    conn: &mut ConnectionManager,
    event: &EventId,
    config: &EventConfig,
    existed_before: bool,
) -> RedisResult<ConfigWrite> {
    let keys = EventKeys::of(event);
    let (answer, recovering): (i64, i64) = PROVISION
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
    if answer >= 0 && recovering == 1 {
        mark_recovering(conn, event).await?;
    }
    Ok(match answer {
        0 => ConfigWrite::Created,
        1 => ConfigWrite::Updated,
        2 => ConfigWrite::Unchanged,
        3 => ConfigWrite::CreatedRecovering,
        negative => ConfigWrite::RefusedBelowIssued { issued: -negative },
    })
}

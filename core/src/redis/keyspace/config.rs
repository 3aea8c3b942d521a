//! Writing an event's configuration hash.

use crate::redis::RedisConnection;
use redis::RedisResult;

use super::{contract, register, Answer, EventLayout};
use crate::event::{EventConfig, EventId};

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
    /// Nothing written: the configuration belongs to another incarnation (another object
    /// of the same name), whose state must be removed first.
    RefusedOtherIncarnation,
    /// Nothing written: the event exists with this number of shards.
    RefusedShardsChanged {
        existing: u16,
    },
}

/// Writes the configuration atomically; counters are never touched. With `existed_before`
/// (the caller knows the event was provisioned earlier) a missing configuration means Redis
/// lost the event's state: it is written back marked recovering, and the consumer restores
/// it from SQL. Every write also lists the event among the provisioned ones (which the
/// consumer's verification pass reads); it cannot be inside the script, since on Redis
/// Cluster that list lives in another slot, so it is repeated on every write and one failed
/// listing is mended by the next.
pub async fn write_config(
    conn: &mut RedisConnection,
    event: &EventId,
    config: &EventConfig,
    existed_before: bool,
) -> RedisResult<ConfigWrite> {
    let layout = EventLayout::new(event, config.shards);
    let existing = super::layout(conn, event).await?;
    if let Some(existing) = &existing {
        if existing.shard_count() != config.shards {
            return Ok(ConfigWrite::RefusedShardsChanged { existing: existing.shard_count() });
        }
    }
    if layout.is_sharded() {
        // Every shard checked before any is written, so that a refused limit leaves no
        // shard with another limit than the rest (a slot issued meanwhile is still caught
        // by the script's own check).
        for shard in layout.shards() {
            let count: Option<i64> = redis::cmd("GET").arg(&layout.keys(shard).count).query_async(&mut *conn).await?;
            let highest = match count.unwrap_or(0) {
                0 => 0,
                n => (n - 1) * i64::from(config.shards) + i64::from(shard) + 1,
            };
            if config.limit < highest {
                return Ok(ConfigWrite::RefusedBelowIssued { issued: highest });
            }
        }
    }
    // The home shard lost while another shard kept its state: Redis lost the event's
    // configuration there, which is written back recovering, never open and empty.
    let others_exist = existing.is_none() && layout.is_sharded() && {
        let exists: bool = redis::cmd("EXISTS").arg(&layout.keys(1).config).query_async(&mut *conn).await?;
        exists
    };
    // Created together, the shards share an epoch (see `grants`).
    let epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or_default();
    // Every shard carries the configuration (the gate reads it in the same script); the home
    // shard, which tells readers the event exists and how it is sharded, is written last.
    let mut home = ConfigWrite::Unchanged;
    for shard in layout.shards().rev() {
        let keys = layout.keys(shard);
        let answer: Vec<i64> = contract::PROVISION
            .invocation(keys, &[])
            .arg(config.limit)
            .arg(config.per_user)
            .arg(config.start.as_millisecond())
            .arg(config.end.as_millisecond())
            .arg(&config.topic)
            // A shard missing while the home shard exists lost its state: written back
            // recovering, never open and empty.
            .arg(if existed_before || others_exist || (shard > 0 && existing.is_some()) { "1" } else { "0" })
            .arg(if config.paused { "1" } else { "0" })
            .arg(config.incarnation.as_deref().unwrap_or_default())
            .arg(shard)
            .arg(config.shards)
            .arg(epoch)
            .invoke_async(&mut *conn)
            .await?;
        let write = match Answer::of("provision", answer.first().copied().unwrap_or_default())? {
            Answer::Created => ConfigWrite::Created,
            Answer::Updated => ConfigWrite::Updated,
            Answer::Unchanged => ConfigWrite::Unchanged,
            Answer::CreatedRecovering => ConfigWrite::CreatedRecovering,
            Answer::OtherIncarnation => return Ok(ConfigWrite::RefusedOtherIncarnation),
            Answer::ShardsChanged => {
                return Ok(ConfigWrite::RefusedShardsChanged { existing: super::layout(conn, event).await?.map_or(1, |l| l.shard_count()) })
            }
            Answer::BelowIssued => return Ok(ConfigWrite::RefusedBelowIssued { issued: answer.get(2).copied().unwrap_or_default() }),
            other => return Err(other.unexpected("provision")),
        };
        // A shard whose configuration was lost is reported even if the home shard kept its own.
        if home != ConfigWrite::CreatedRecovering {
            home = write;
        }
    }
    register(conn, event).await?;
    Ok(home)
}

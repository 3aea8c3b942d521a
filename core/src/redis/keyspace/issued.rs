//! Whether a gate issued a slot to a user: the consumer's check of every record before it
//! writes it, so that a forged record (well formed, in range, but never handed out to its
//! user) is refused instead of taking the slot's row, and a stray one cannot make it write
//! slot rows up to its slot.

use std::collections::BTreeMap;

use redis::RedisResult;

use super::{contract, script_source, Answer, EventLayout};
use crate::event::EventKey;
use crate::redis::RedisConnection;

/// What Redis says of some coupons of one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Issued {
    /// For each `(user, slot)`, whether the user holds that slot.
    Held(Vec<bool>),
    /// Redis cannot tell: a home shard of these users has no configuration, is recovering,
    /// or its state was last verified on another server (a restart, a failover: the gate and
    /// the consumer's verification mark it recovering); or the coupons are of another object
    /// of the event's name. Entries leave a user only by a release (the produce certainly
    /// failed), a heal (no row, its deadline long past) or a deletion, so a verified shard
    /// without the entry never issued that slot to that user.
    CannotTell,
    /// The event's layout is not `layout` (created again with another number of shards).
    OtherLayout,
}

/// Whether each `(user, slot)` of the event `key` is held in Redis, with the event's layout
/// as the caller knows it: one read-only script per home shard, which checks the shard (its
/// incarnation, layout and fencing) and reads its users' entries together, so a failover
/// between the two cannot pass a lost entry for a forgery; a master that stalls writes, or
/// the shard of another user, holds up no record.
pub async fn issued_to(conn: &mut RedisConnection, key: &EventKey, layout: &EventLayout, coupons: &[(&str, i64)]) -> RedisResult<Issued> {
    let mut by_home: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    for (index, (user, _)) in coupons.iter().enumerate() {
        by_home.entry(layout.home_shard(user)).or_default().push(index);
    }
    let mut issued = vec![false; coupons.len()];
    for (shard, indices) in by_home {
        let keys = layout.keys(shard);
        let mut call = redis::cmd("EVAL_RO");
        call.arg(script_source!("issued")).arg(contract::ISSUED.keys.len());
        for name in contract::ISSUED.keys {
            call.arg(keys.named(name));
        }
        call.arg(key.incarnation().unwrap_or_default()).arg(shard).arg(layout.shard_count());
        for index in &indices {
            call.arg(coupons[*index].0).arg(coupons[*index].1);
        }
        let answer: redis::Value = conn.query_at(&keys.config, &call).await?;
        let held = match answer {
            redis::Value::Array(held) => held,
            redis::Value::Int(code) => match Answer::of("issued", code)? {
                Answer::Recovering | Answer::OtherIncarnation => return Ok(Issued::CannotTell),
                Answer::OtherLayout => return Ok(Issued::OtherLayout),
                other => return Err(other.unexpected("issued")),
            },
            other => return Err((redis::ErrorKind::TypeError, "issued.lua answered", format!("{other:?}")).into()),
        };
        for (index, held) in indices.into_iter().zip(held) {
            issued[index] = matches!(held, redis::Value::Int(1));
        }
    }
    Ok(Issued::Held(issued))
}

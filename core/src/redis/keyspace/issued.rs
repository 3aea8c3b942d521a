//! Whether a gate issued a slot to a user: the consumer's check of a record that would make
//! it add slot rows, so that a stray record (well formed, in range, but never handed out)
//! cannot make it write rows up to its slot.

use std::collections::BTreeMap;

use redis::RedisResult;

use super::{contract, script_source, EventLayout};
use crate::redis::RedisConnection;

/// For each `(user, slot)`, whether the user holds that slot in Redis; `None` when Redis
/// cannot tell: a home shard of these users is recovering, or its state was last verified
/// on another server (a restart, a failover: the gate and the consumer's verification mark
/// it recovering). Entries leave a user only by a release (the produce certainly failed), a
/// heal (no row, its deadline long past) or a deletion, so a verified shard without the
/// entry never issued that slot to that user.
///
/// One read-only script per home shard, which checks the shard and reads its users' entries
/// together (a failover between the two cannot pass a lost entry for a stray): a master
/// that stalls writes, or the shard of another user, holds up no record.
pub async fn issued_to(conn: &mut RedisConnection, layout: &EventLayout, coupons: &[(&str, i64)]) -> RedisResult<Option<Vec<bool>>> {
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
        for index in &indices {
            call.arg(coupons[*index].0).arg(coupons[*index].1);
        }
        let answer: redis::Value = conn.query_at(&keys.config, &call).await?;
        let redis::Value::Array(held) = answer else { return Ok(None) };
        for (index, held) in indices.into_iter().zip(held) {
            issued[index] = matches!(held, redis::Value::Int(1));
        }
    }
    Ok(Some(issued))
}

//! Whether a gate issued a slot to a user: the consumer's check of a record that would make
//! it add slot rows, so that a stray record (well formed, in range, but never handed out)
//! cannot make it write rows up to its slot.

use redis::RedisResult;

use super::{fence, holdings, EventLayout};
use crate::redis::RedisConnection;

/// For each `(user, slot)`, whether the user holds that slot in Redis; `None` when Redis
/// cannot tell: a shard is recovering, or its state was last verified on another server
/// (then marked recovering here, as the gate would). Entries leave a user only by a release
/// (the produce certainly failed), a heal (no row, its deadline long past) or a deletion,
/// so a verified shard without the entry never issued that slot to that user.
pub async fn issued_to(conn: &mut RedisConnection, layout: &EventLayout, coupons: &[(&str, i64)]) -> RedisResult<Option<Vec<bool>>> {
    for shard in layout.shards() {
        if fence(conn, layout, shard, false).await? != Some(false) {
            return Ok(None);
        }
    }
    let mut issued = Vec::with_capacity(coupons.len());
    for (user, slot) in coupons {
        issued.push(holdings(conn, layout, user).await?.iter().any(|holding| holding.slot == *slot));
    }
    Ok(Some(issued))
}

//! Stock moving between the shards of a sharded event.
//!
//! Each shard hands out the slots of its own stride, so slot numbers never collide; when the
//! user's home shard has none left, the api asks the shard with the most stock to `grant`
//! part of it. The grant is recorded on the source until it is settled, and taken by the
//! target with the gate call that needs it (`gate::apply` with a `Grant`), once. The api
//! settles a grant its gate call took; grants whose deadline passed (an api that died in
//! between) are closed on their target (`close_grant`: taken, or refused from now on) and
//! settled by the consumer's healing, their slots back on the source when refused. So slots
//! in flight are never lost and never handed out twice.

use std::time::Duration;

use super::{contract, field, Answer, EventLayout, Grant};
use crate::redis::RedisConnection;

/// What a shard could give, and what it holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardStock {
    /// Slots it could hand out now: its free list and what is left of its stride.
    pub available: i64,
    /// Entries its users hold.
    pub held: i64,
    pub holders_version: i64,
    pub limit: i64,
    pub recovering: bool,
    /// Grants it gave that are not settled yet (slots in flight).
    pub unsettled_grants: i64,
}

/// Reads one shard's stock in one pipeline (`None`: the shard has no configuration).
pub async fn stock(conn: &mut RedisConnection, layout: &EventLayout, shard: u16) -> redis::RedisResult<Option<ShardStock>> {
    let keys = layout.keys(shard);
    #[allow(clippy::type_complexity)]
    let ((limit, recovering, holders_version), count, free, held, unsettled): (
        (Option<i64>, Option<String>, Option<i64>),
        Option<i64>,
        i64,
        Option<i64>,
        i64,
    ) = redis::pipe()
        .hget(&keys.config, &[field::LIMIT, field::RECOVERING, field::HOLDERS_VERSION])
        .get(&keys.count)
        .llen(&keys.free)
        .get(&keys.held)
        .hlen(&keys.grants)
        .query_async(conn)
        .await?;
    let Some(limit) = limit else { return Ok(None) };
    Ok(Some(ShardStock {
        available: free + stride_left(limit, count.unwrap_or(0), shard, layout.shard_count()),
        held: held.unwrap_or(0),
        holders_version: holders_version.unwrap_or(0),
        limit,
        recovering: recovering.as_deref() == Some("1"),
        unsettled_grants: unsettled,
    }))
}

/// Slots of `shard`'s stride not handed out yet, after `count` of them were: the stride's
/// slots are `shard + 1 + k * shards` for `k >= count`, up to `limit`.
pub fn stride_left(limit: i64, count: i64, shard: u16, shards: u16) -> i64 {
    let (shard, shards) = (i64::from(shard), i64::from(shards.max(1)));
    if limit <= shard {
        return 0;
    }
    ((limit - 1 - shard) / shards + 1 - count).max(0)
}

/// Asks `source` to grant up to `wanted` slots to `target`, for `lease` (after which healing
/// may close the grant). `Ok(None)`: nothing to give, or the source is recovering.
pub async fn grant(
    conn: &mut RedisConnection,
    layout: &EventLayout,
    source: u16,
    target: u16,
    wanted: i64,
    lease: Duration,
    id: &str,
) -> redis::RedisResult<Option<Grant>> {
    let keys = layout.keys(source);
    let answer: Vec<i64> = contract::GRANT
        .invocation(keys, &[])
        .arg(id)
        .arg(target)
        .arg(wanted)
        .arg(lease.as_millis() as u64)
        .arg(source)
        .arg(layout.shard_count())
        .invoke_async(conn)
        .await?;
    // Nothing to give, the source recovering, another layout: the caller asks elsewhere.
    Ok(match answer.as_slice() {
        [code, epoch, slots @ ..] if Answer::of("grant", *code)? == Answer::Done => {
            Some(Grant { id: id.to_owned(), epoch: *epoch, slots: slots.to_vec() })
        }
        [code] => match Answer::of("grant", *code)? {
            Answer::Nothing | Answer::Recovering | Answer::OtherLayout => None,
            other => return Err(other.unexpected("grant")),
        },
        _ => return Err(Answer::Done.unexpected("grant")),
    })
}

/// How a grant ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantVerdict {
    /// The target took it.
    Taken,
    /// The target refused it for good: the slots go back to the source.
    Refused,
}

/// Settles a grant on its source. Returns whether there was one to settle.
pub async fn settle_grant(
    conn: &mut RedisConnection,
    layout: &EventLayout,
    source: u16,
    id: &str,
    verdict: GrantVerdict,
) -> redis::RedisResult<bool> {
    let keys = layout.keys(source);
    let settled: i64 = contract::SETTLE_GRANT
        .invocation(keys, &[])
        .arg(id)
        .arg(match verdict {
            GrantVerdict::Taken => "a",
            GrantVerdict::Refused => "r",
        })
        .invoke_async(conn)
        .await?;
    Ok(Answer::of("settle_grant", settled)? == Answer::Done)
}

/// Decides an overdue grant on its target for good: taken, or refused from now on. `None`:
/// undecided, because the target is recovering or lost its configuration (its `accepted`
/// may be gone; the restore that follows voids every grant).
pub async fn close_grant(
    conn: &mut RedisConnection,
    layout: &EventLayout,
    target: u16,
    id: &str,
) -> redis::RedisResult<Option<GrantVerdict>> {
    let keys = layout.keys(target);
    let taken: i64 = contract::CLOSE_GRANT.invocation(keys, &[]).arg(id).invoke_async(conn).await?;
    Ok(match Answer::of("close_grant", taken)? {
        Answer::Taken => Some(GrantVerdict::Taken),
        Answer::Refused => Some(GrantVerdict::Refused),
        Answer::Recovering | Answer::Missing => None,
        other => return Err(other.unexpected("close_grant")),
    })
}

/// Up to `max` grants `source` gave whose deadline is at or before `cutoff_ms`, with their
/// target shard.
pub async fn expired_grants(
    conn: &mut RedisConnection,
    layout: &EventLayout,
    source: u16,
    cutoff_ms: i64,
    max: usize,
) -> redis::RedisResult<Vec<(String, u16)>> {
    let keys = layout.keys(source);
    let ids = super::due_members(conn, &keys.grant_deadlines, cutoff_ms, max).await?;
    let mut expired = Vec::with_capacity(ids.len());
    for id in ids {
        let record: Option<String> = redis::cmd("HGET").arg(&keys.grants).arg(&id).query_async(&mut *conn).await?;
        match record.as_deref().and_then(|r| r.split_ascii_whitespace().next()).and_then(|t| t.parse().ok()) {
            Some(target) => expired.push((id, target)),
            None => {
                // A deadline without its record: nothing in flight, only the deadline to drop.
                let _: i64 = redis::cmd("ZREM").arg(&keys.grant_deadlines).arg(&id).query_async(&mut *conn).await?;
            }
        }
    }
    Ok(expired)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_partition_the_slots() {
        for limit in [1i64, 2, 3, 7, 300, 301] {
            for shards in 1u16..=5 {
                let total: i64 = (0..shards).map(|s| stride_left(limit, 0, s, shards)).sum();
                assert_eq!(total, limit, "limit {limit}, {shards} shards");
            }
        }
        assert_eq!(stride_left(10, 2, 1, 3), 1, "slots 2, 5, 8: two handed out");
        assert_eq!(stride_left(10, 5, 1, 3), 0);
        assert_eq!(stride_left(2, 0, 2, 3), 0, "shard 2 of 3 has no slot below 3");
    }
}

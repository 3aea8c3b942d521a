//! Settling entries that never got a row: the consumer marks what it wrote, and heals what
//! was issued but never written (a client or a process that died mid-apply, a produce whose
//! outcome stayed unknown), so every event ends with `issued == persisted`.

use crate::redis::RedisConnection;
use redis::RedisResult;

use super::{contract, EventLayout};
use crate::event::EventKey;

/// Marks the entries of rows the consumer wrote (one call per shard of the event and batch),
/// on each row's user's home shard of `layout` (the event's). Returns how many entries
/// became written.
pub async fn mark_written(conn: &mut RedisConnection, key: &EventKey, layout: &EventLayout, rows: &[(&str, i64)]) -> RedisResult<i64> {
    let mut marked = 0;
    for shard in layout.shards() {
        let mine: Vec<&(&str, i64)> = rows.iter().filter(|(user, _)| layout.home_shard(user) == shard).collect();
        if mine.is_empty() {
            continue;
        }
        let keys = layout.keys(shard);
        let mut invocation = contract::WRITTEN.invocation(keys, &[]);
        invocation.arg(key.incarnation().unwrap_or_default());
        for (user, slot) in mine {
            invocation.arg(*user).arg(*slot);
        }
        let n: i64 = invocation.invoke_async(&mut *conn).await?;
        marked += n;
    }
    Ok(marked)
}

/// An entry whose delivery deadline has passed without a row being marked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverdueEntry {
    pub user: String,
    pub slot: i64,
}

/// Up to `max` entries of one shard whose delivery deadline is at or before `cutoff_ms`
/// (server time), oldest first.
pub async fn overdue_entries(
    conn: &mut RedisConnection,
    layout: &EventLayout,
    shard: u16,
    cutoff_ms: i64,
    max: usize,
) -> RedisResult<Vec<OverdueEntry>> {
    let members = super::due_members(conn, &layout.keys(shard).unwritten, cutoff_ms, max).await?;
    Ok(members
        .into_iter()
        .filter_map(|member| {
            let (slot, user) = member.split_once(':')?;
            Some(OverdueEntry { user: user.to_owned(), slot: slot.parse().ok()? })
        })
        .collect())
}

/// What SQL says about an overdue entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealVerdict {
    /// The row exists: the entry was written, only not marked.
    Written,
    /// No row, and no row holds the slot: the entry goes and the slot is free again.
    Free,
    /// No row for this entry, but another row holds the slot: the entry goes, the slot stays.
    SlotTaken,
}

/// What one heal call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Healed {
    pub healed: i64,
    pub written: i64,
}

/// Settles overdue entries of one shard by their verdicts. An entry delivered again since `cutoff_ms`
/// (its deadline moved) is left alone.
pub async fn heal(
    conn: &mut RedisConnection,
    layout: &EventLayout,
    shard: u16,
    cutoff_ms: i64,
    verdicts: &[(OverdueEntry, HealVerdict)],
) -> RedisResult<Healed> {
    if verdicts.is_empty() {
        return Ok(Healed::default());
    }
    let keys = layout.keys(shard);
    let mut invocation = contract::HEAL.invocation(keys, &[]);
    invocation.arg(cutoff_ms);
    for (entry, verdict) in verdicts {
        let code = match verdict {
            HealVerdict::Written => "w",
            HealVerdict::Free => "f",
            HealVerdict::SlotTaken => "k",
        };
        invocation.arg(&entry.user).arg(entry.slot).arg(code);
    }
    let (healed, written): (i64, i64) = invocation.invoke_async(conn).await?;
    Ok(Healed { healed, written })
}

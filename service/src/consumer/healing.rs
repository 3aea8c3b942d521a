//! Healing: entries issued but never written (a client or an api that died between the
//! gate and the broker, a produce whose outcome stayed unknown) are found once their
//! delivery deadline has passed and the topic is drained, looked up in SQL, and settled:
//! marked written if the row exists, otherwise given back. Every event so ends with
//! `issued == persisted`. The work is proportional to the overdue entries, never to the
//! event's size.

use coupon_core::event::EventKey;
use coupon_core::redis::keyspace::{self, EventLayout, HealVerdict, Healed, OverdueEntry};
use coupon_core::redis::RedisConnection;

use super::recovery::RecoveryError;
use crate::sql::Store;

/// Overdue entries settled per Redis call.
pub const HEAL_CHUNK: usize = 200;

/// What SQL says about one entry, from the rows holding its user or its slot.
pub fn verdict(entry: &OverdueEntry, rows: &[(String, i64)]) -> HealVerdict {
    if rows.iter().any(|(user, slot)| *user == entry.user && *slot == entry.slot) {
        HealVerdict::Written
    } else if rows.iter().any(|(_, slot)| *slot == entry.slot) {
        HealVerdict::SlotTaken
    } else {
        HealVerdict::Free
    }
}

/// Settles `entries` of one shard (overdue at `cutoff_ms`; the caller checked the topic
/// drained after reading the cut-off).
#[allow(clippy::too_many_arguments)]
pub async fn heal_entries(
    store: &Store,
    conn: &mut RedisConnection,
    key: &EventKey,
    layout: &EventLayout,
    shard: u16,
    cutoff_ms: i64,
    entries: Vec<OverdueEntry>,
) -> Result<Healed, RecoveryError> {
    let name = key.to_string();
    let mut verdicts = Vec::with_capacity(entries.len());
    for entry in entries {
        let rows = store.rows_of_user_or_slot(&name, &entry.user, entry.slot).await?;
        let verdict = verdict(&entry, &rows);
        verdicts.push((entry, verdict));
    }
    Ok(keyspace::heal(conn, layout, shard, cutoff_ms, &verdicts).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_the_rows() {
        let entry = OverdueEntry { user: "u".into(), slot: 5 };
        assert_eq!(verdict(&entry, &[("u".into(), 5)]), HealVerdict::Written);
        assert_eq!(verdict(&entry, &[("v".into(), 5)]), HealVerdict::SlotTaken);
        assert_eq!(verdict(&entry, &[("u".into(), 7)]), HealVerdict::Free, "the user holds another slot: this one is free");
        assert_eq!(verdict(&entry, &[]), HealVerdict::Free);
    }
}

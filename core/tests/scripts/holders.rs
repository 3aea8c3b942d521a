//! `holder_changes.lua` and the change log the writers keep (`holders_changed` and
//! `holders_reset` in `common.lua`), through `keyspace::refresh_holders`: after every kind of
//! change of a sold-out event's holders, holders refreshed from the log equal holders read
//! whole, and the refresh read only the users that changed, or the whole shard when the log
//! cannot say.

use std::time::Duration;

use coupon_core::event::EventConfig;
use coupon_core::redis::keyspace::{self, EventLayout, GateDecision, HealVerdict, Holders, HoldersRead, OverdueEntry};
use coupon_core::redis::RedisConnection;

use crate::{connect, event, homed_on, open, LONG};

const MAX: usize = 100_000;

/// Issues `user` a slot with `lease`; answers the slot and the delivery's deadline.
async fn issue(conn: &mut RedisConnection, layout: &EventLayout, user: &str, lease: Duration) -> (i64, i64) {
    match keyspace::apply(conn, layout, user, lease, None).await.unwrap().0 {
        GateDecision::Issued { slot, deadline_ms, .. } => (slot, deadline_ms),
        other => panic!("{user}: {other:?}"),
    }
}

/// Refreshes `holders` and checks the refresh read what `expected` says and left them equal
/// to holders read whole.
async fn refresh_reads(conn: &mut RedisConnection, layout: &EventLayout, holders: &mut Holders, expected: HoldersRead, case: &str) {
    let read = keyspace::refresh_holders(conn, layout, holders, MAX).await.unwrap().expect("within the limit");
    assert_eq!(read, expected, "{case}: what the refresh read");
    let whole = keyspace::holders(conn, layout, MAX).await.unwrap().unwrap();
    assert_eq!(*holders, whole, "{case}: refreshed holders equal holders read whole");
}

fn changed(users: usize) -> HoldersRead {
    HoldersRead { changed_users: users, shards_read_whole: 0 }
}

/// Each change of a sold-out sharded event's holders, in turn: nothing, a release, the slot
/// handed out again, a heal, a new limit, a slot from the counter, a grant given back, more
/// holders than kept.
#[tokio::test]
async fn a_refresh_reads_only_what_changed_and_ends_equal_to_a_whole_read() {
    let mut conn = connect().await;
    let (id, layout) = event(&mut conn, &EventConfig { shards: 2, ..open(8) }).await;
    let (first, second) = (homed_on(&layout, 0, 6), homed_on(&layout, 1, 6));
    let mut deadlines = Vec::new();
    for user in first.iter().take(4) {
        deadlines.push(issue(&mut conn, &layout, user, LONG).await);
    }
    // The second shard's last user's delivery ends at once: healing will take it.
    for (n, user) in second.iter().take(4).enumerate() {
        issue(&mut conn, &layout, user, if n == 3 { Duration::from_millis(1) } else { LONG }).await;
    }
    let mut holders = keyspace::holders(&mut conn, &layout, MAX).await.unwrap().unwrap();
    assert_eq!(holders.len(), 8);
    refresh_reads(&mut conn, &layout, &mut holders, changed(0), "nothing changed").await;

    let (slot, deadline) = deadlines[0];
    assert!(keyspace::release(&mut conn, &layout, &first[0], slot, deadline).await.unwrap());
    refresh_reads(&mut conn, &layout, &mut holders, changed(1), "a release").await;
    assert!(holders.get(&first[0]).is_none());

    let (again, _) = issue(&mut conn, &layout, &first[4], LONG).await;
    assert_eq!(again, slot, "the slot given back");
    refresh_reads(&mut conn, &layout, &mut holders, changed(1), "a slot handed out again").await;
    assert_eq!(holders.get(&first[4]).map(|holding| holding.slot), Some(slot));

    tokio::time::sleep(Duration::from_millis(20)).await;
    let cutoff = keyspace::server_time_ms(&mut conn).await.unwrap();
    let healed_slot = keyspace::holdings(&mut conn, &layout, &second[3]).await.unwrap()[0].slot;
    let entry = OverdueEntry { user: second[3].clone(), slot: healed_slot };
    assert_eq!(keyspace::heal(&mut conn, &layout, 1, cutoff, &[(entry, HealVerdict::Free)]).await.unwrap().healed, 1);
    issue(&mut conn, &layout, &second[4], LONG).await;
    refresh_reads(&mut conn, &layout, &mut holders, changed(2), "a heal, and the slot handed out again").await;

    // Shard 0's stride gains 9 and 11; shard 1's 10 and 12.
    let raised = EventConfig { shards: 2, ..open(12) };
    assert_eq!(keyspace::write_config(&mut conn, &id, &raised, false).await.unwrap(), keyspace::ConfigWrite::Updated);
    refresh_reads(&mut conn, &layout, &mut holders, HoldersRead { changed_users: 0, shards_read_whole: 2 }, "a new limit").await;
    // Slots from the counter are not logged: until its last one, holders are not complete
    // (the event is not sold out); the last one makes the next refresh read the shard whole.
    issue(&mut conn, &layout, &first[5], LONG).await;
    let mut before_the_last = holders.clone();
    keyspace::refresh_holders(&mut conn, &layout, &mut before_the_last, MAX).await.unwrap().unwrap();
    issue(&mut conn, &layout, "counter-last", LONG).await;
    assert_eq!(layout.home_shard("counter-last"), 0, "a user of shard 0");
    refresh_reads(&mut conn, &layout, &mut holders, HoldersRead { changed_users: 0, shards_read_whole: 1 }, "the counter's last slot")
        .await;
    refresh_reads(&mut conn, &layout, &mut before_the_last, HoldersRead { changed_users: 0, shards_read_whole: 1 }, "read in between")
        .await;

    // Stock given back by a grant its target refused for good: the version moves, no holder
    // changed.
    let grant = keyspace::grant(&mut conn, &layout, 1, 0, 2, LONG, "refused-grant").await.unwrap().expect("shard 1 has slots 10 and 12");
    assert_eq!(keyspace::close_grant(&mut conn, &layout, 0, &grant.id).await.unwrap(), Some(keyspace::GrantVerdict::Refused));
    let counter_granted = HoldersRead { changed_users: 0, shards_read_whole: 1 };
    refresh_reads(&mut conn, &layout, &mut holders, counter_granted, "the counter's last slot granted").await;
    assert!(keyspace::settle_grant(&mut conn, &layout, 1, &grant.id, keyspace::GrantVerdict::Refused).await.unwrap());
    refresh_reads(&mut conn, &layout, &mut holders, changed(0), "a grant given back").await;
    let (slot, _) = issue(&mut conn, &layout, &second[5], LONG).await;
    assert!(slot == 10 || slot == 12, "a slot the grant gave back: {slot}");
    refresh_reads(&mut conn, &layout, &mut holders, changed(1), "a slot given back handed out").await;

    let mut stale = holders.clone();
    assert!(keyspace::release(&mut conn, &layout, &first[1], deadlines[1].0, deadlines[1].1).await.unwrap());
    assert_eq!(keyspace::refresh_holders(&mut conn, &layout, &mut stale, 5).await.unwrap(), None, "more holders than kept");
    keyspace::delete_event(&mut conn, &id).await.unwrap();
}

/// More users change than the log keeps: a refresh of holders older than its oldest change
/// reads the shard whole, and still ends equal to a whole read.
#[tokio::test]
async fn holders_older_than_the_log_are_read_whole() {
    const USERS: usize = 10_050;
    let mut conn = connect().await;
    let (id, layout) = event(&mut conn, &open(USERS as i64)).await;
    let users: Vec<String> = (0..USERS).map(|n| format!("crowd-{n}")).collect();
    for batch in users.chunks(500) {
        let batch: Vec<&str> = batch.iter().map(String::as_str).collect();
        let call = keyspace::unique_id();
        keyspace::apply_many(&mut conn, &layout, 0, &batch, Duration::from_millis(1), None, &call).await.unwrap();
    }
    let mut holders = keyspace::holders(&mut conn, &layout, MAX).await.unwrap().unwrap();
    assert_eq!(holders.len(), USERS);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cutoff = keyspace::server_time_ms(&mut conn).await.unwrap();
    let overdue = keyspace::overdue_entries(&mut conn, &layout, 0, cutoff, USERS).await.unwrap();
    assert_eq!(overdue.len(), USERS);
    for chunk in overdue.chunks(1_000) {
        let verdicts: Vec<_> = chunk.iter().cloned().map(|entry| (entry, HealVerdict::Free)).collect();
        keyspace::heal(&mut conn, &layout, 0, cutoff, &verdicts).await.unwrap();
    }
    refresh_reads(&mut conn, &layout, &mut holders, HoldersRead { changed_users: 0, shards_read_whole: 1 }, "past the log").await;
    assert!(holders.is_empty());
    keyspace::delete_event(&mut conn, &id).await.unwrap();
}

/// Redis lost writes (a failover to a replica that lagged, a restart from an older file) and
/// the consumer restored the shard from SQL. The restore's version is past every version of
/// the lost history (it is at least the server's time in microseconds), so holders an api
/// read from that history are read whole again, never taken for current; so are holders of
/// an earlier event of the same name.
#[tokio::test]
async fn holders_from_before_a_restore_are_read_whole() {
    let mut conn = connect().await;
    let (id, layout) = event(&mut conn, &open(2)).await;
    for user in ["before-1", "before-2"] {
        issue(&mut conn, &layout, user, LONG).await;
    }
    let mut holders = keyspace::holders(&mut conn, &layout, MAX).await.unwrap().unwrap();
    let before = holders.version();
    let far = i64::MAX / 2;
    keyspace::fence(&mut conn, &layout, 0, true).await.unwrap();
    assert_eq!(keyspace::restore_begin(&mut conn, &layout, 0, "t", "me", far, 1).await.unwrap(), keyspace::RestoreStep::Done);
    let rows = [("restored".to_owned(), 1, 1)];
    assert_eq!(keyspace::restore_chunk(&mut conn, &layout, 0, "t", 1, &[&rows[0]], &[]).await.unwrap(), keyspace::RestoreStep::Done);
    assert_eq!(keyspace::restore_finish(&mut conn, &layout, 0, "t", 1, 1).await.unwrap(), keyspace::RestoreStep::Done);
    refresh_reads(&mut conn, &layout, &mut holders, HoldersRead { changed_users: 0, shards_read_whole: 1 }, "after a restore").await;
    assert!(holders.version() > before);
    assert!(holders.get("before-1").is_none() && holders.get("restored").is_some());

    // The event deleted and created again under its name: a new history, read whole.
    keyspace::delete_event(&mut conn, &id).await.unwrap();
    assert_eq!(keyspace::write_config(&mut conn, &id, &open(2), false).await.unwrap(), keyspace::ConfigWrite::Created);
    refresh_reads(&mut conn, &layout, &mut holders, HoldersRead { changed_users: 0, shards_read_whole: 1 }, "a new event").await;
    assert!(holders.is_empty());
    keyspace::delete_event(&mut conn, &id).await.unwrap();
}

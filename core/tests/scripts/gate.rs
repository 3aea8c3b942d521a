//! `apply.lua`, `ack.lua`, `release.lua`, `written.lua`, `issued.lua`.

use std::time::Duration;

use coupon_core::event::{EventConfig, EventKey};
use coupon_core::redis::keyspace::{self, EventLayout, GateDecision};

use crate::{connect, event, homed_on, open, unique, LONG, NAMESPACE};

/// The answer's name, to compare a case's answer with the one it expects.
fn name(decision: &GateDecision) -> &'static str {
    match decision {
        GateDecision::Issued { again: false, .. } => "issued",
        GateDecision::Issued { again: true, .. } => "delivered again",
        GateDecision::Confirmed { .. } => "confirmed",
        GateDecision::Duplicate { .. } => "duplicate",
        GateDecision::SoldOut { .. } => "sold out",
        GateDecision::NotOpen => "not open",
        GateDecision::Closed => "closed",
        GateDecision::Deleted => "event deleted",
        GateDecision::Missing => "missing",
        GateDecision::Recovering => "being verified",
        GateDecision::Paused => "paused",
        GateDecision::ShardEmpty { .. } => "shard empty",
        GateDecision::OtherLayout => "other layout",
    }
}

/// Every answer of the gate (`apply.lua`), one case each.
#[tokio::test]
async fn the_gate_gives_each_of_its_answers() {
    let cases = [
        "issued",
        "delivered again",
        "confirmed",
        "duplicate",
        "sold out",
        "not open",
        "closed",
        "event deleted",
        "missing",
        "being verified",
        "paused",
        "shard empty",
        "other layout",
    ];
    let mut conn = connect().await;
    for case in cases {
        let now = jiff::Timestamp::now();
        let config = match case {
            "sold out" => open(1),
            "not open" => {
                EventConfig { start: now + jiff::SignedDuration::from_hours(1), end: now + jiff::SignedDuration::from_hours(2), ..open(5) }
            }
            "closed" => {
                EventConfig { start: now - jiff::SignedDuration::from_hours(2), end: now - jiff::SignedDuration::from_hours(1), ..open(5) }
            }
            "paused" => EventConfig { paused: true, ..open(5) },
            "shard empty" => EventConfig { shards: 2, ..open(2) },
            _ => open(5),
        };
        let (id, layout) = event(&mut conn, &config).await;
        let user = homed_on(&layout, 0, 1).remove(0);
        let gate = conn.clone();
        let apply = |lease: Duration| {
            let (mut conn, layout, user) = (gate.clone(), layout.clone(), user.clone());
            async move { keyspace::apply(&mut conn, &layout, &user, lease, None).await.unwrap().0 }
        };
        let answer = match case {
            "delivered again" => {
                apply(Duration::from_millis(1)).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                apply(LONG).await
            }
            "confirmed" => {
                let GateDecision::Issued { slot, .. } = apply(LONG).await else { panic!("not issued") };
                let key = EventKey::new(id.clone(), None).unwrap();
                assert_eq!(keyspace::mark_written(&mut conn, &key, &layout, &[(&user, slot)]).await.unwrap(), 1);
                apply(LONG).await
            }
            "duplicate" => {
                apply(LONG).await;
                apply(LONG).await
            }
            "sold out" => {
                keyspace::apply(&mut conn, &layout, "first", LONG, None).await.unwrap();
                apply(LONG).await
            }
            "shard empty" => {
                // Shard 0 of a 2-shard event of 2 coupons hands out slot 1 only.
                let other = homed_on(&layout, 0, 2).remove(1);
                keyspace::apply(&mut conn, &layout, &other, LONG, None).await.unwrap();
                apply(LONG).await
            }
            "event deleted" => {
                keyspace::delete_event(&mut conn, &id).await.unwrap();
                apply(LONG).await
            }
            "missing" => {
                let never = coupon_core::event::EventId::new(NAMESPACE, &unique("never")).unwrap();
                keyspace::apply(&mut conn, &EventLayout::single(&never), &user, LONG, None).await.unwrap().0
            }
            "being verified" => {
                assert_eq!(keyspace::fence(&mut conn, &layout, 0, true).await.unwrap(), Some(true));
                apply(LONG).await
            }
            "other layout" => {
                keyspace::apply(&mut conn, &EventLayout::new(&id, 2), &homed_on(&EventLayout::new(&id, 2), 0, 1)[0], LONG, None)
                    .await
                    .unwrap()
                    .0
            }
            _ => apply(LONG).await,
        };
        assert_eq!(name(&answer), case, "{answer:?}");
        let _ = keyspace::delete_event(&mut conn, &id).await;
    }
}

/// A gate call sent again with the same id (a client that resent it) answers what it
/// answered, not "duplicate" for the slots it just issued.
#[tokio::test]
async fn a_resent_gate_call_answers_what_it_answered() {
    let mut conn = connect().await;
    let (id, layout) = event(&mut conn, &open(5)).await;
    let users = homed_on(&layout, 0, 2);
    let users: Vec<&str> = users.iter().map(String::as_str).collect();
    let call = keyspace::unique_id();
    let first = keyspace::apply_many(&mut conn, &layout, 0, &users, LONG, None, &call).await.unwrap().0;
    let again = keyspace::apply_many(&mut conn, &layout, 0, &users, LONG, None, &call).await.unwrap().0;
    assert_eq!(first, again);
    assert!(first.iter().all(|d| name(d) == "issued"), "{first:?}");
    keyspace::delete_event(&mut conn, &id).await.unwrap();
}

/// `ack.lua` answers how many entries changed: pending to acknowledged, written but
/// unconfirmed to written, and nothing the second time.
#[tokio::test]
async fn acknowledgements_count_what_they_changed() {
    let mut conn = connect().await;
    let (id, layout) = event(&mut conn, &open(5)).await;
    let [pending, unconfirmed] = [0, 1].map(|n| homed_on(&layout, 0, 2).remove(n));
    let mut slots = Vec::new();
    for user in [&pending, &unconfirmed] {
        let GateDecision::Issued { slot, .. } = keyspace::apply(&mut conn, &layout, user, LONG, None).await.unwrap().0 else { panic!() };
        slots.push(slot);
    }
    let key = EventKey::new(id.clone(), None).unwrap();
    keyspace::mark_written(&mut conn, &key, &layout, &[(&unconfirmed, slots[1])]).await.unwrap();
    let acks = vec![(pending.clone(), slots[0]), (unconfirmed.clone(), slots[1])];
    for (case, expected) in [("pending and unconfirmed", 2), ("again", 0)] {
        assert_eq!(keyspace::ack(&mut conn, &layout, 0, &acks).await.unwrap(), expected, "{case}");
    }
    keyspace::delete_event(&mut conn, &id).await.unwrap();
}

/// `release.lua`: only the pending entry of that slot, under the deadline of the delivery
/// that failed.
#[tokio::test]
async fn a_release_gives_back_only_the_failed_delivery() {
    let mut conn = connect().await;
    let (id, layout) = event(&mut conn, &open(5)).await;
    let GateDecision::Issued { slot, deadline_ms, .. } = keyspace::apply(&mut conn, &layout, "u", LONG, None).await.unwrap().0 else {
        panic!()
    };
    let cases = [
        ("another delivery's deadline", slot, deadline_ms + 1, false),
        ("another slot", slot + 1, deadline_ms, false),
        ("the failed delivery", slot, deadline_ms, true),
        ("again", slot, deadline_ms, false),
    ];
    for (case, slot, deadline, released) in cases {
        assert_eq!(keyspace::release(&mut conn, &layout, "u", slot, deadline).await.unwrap(), released, "{case}");
    }
    keyspace::delete_event(&mut conn, &id).await.unwrap();
}

/// `written.lua` marks entries written once, and none of another incarnation's rows.
#[tokio::test]
async fn written_rows_mark_their_entries_once() {
    let mut conn = connect().await;
    let (id, layout) = event(&mut conn, &open(5)).await;
    let GateDecision::Issued { slot, .. } = keyspace::apply(&mut conn, &layout, "u", LONG, None).await.unwrap().0 else { panic!() };
    let other = EventKey::new(id.clone(), Some("other-object")).unwrap();
    let key = EventKey::new(id.clone(), None).unwrap();
    for (case, key, marked) in [("another incarnation's row", &other, 0), ("its row", &key, 1), ("again", &key, 0)] {
        assert_eq!(keyspace::mark_written(&mut conn, key, &layout, &[("u", slot)]).await.unwrap(), marked, "{case}");
    }
    keyspace::delete_event(&mut conn, &id).await.unwrap();
}

/// `issued.lua`: whether users hold slots; that it cannot tell while the shard recovers or
/// for another object's records; that the caller's layout is not the event's.
#[tokio::test]
async fn the_issue_check_tells_or_says_it_cannot() {
    use keyspace::Issued;
    let mut conn = connect().await;
    let (id, layout) = event(&mut conn, &open(5)).await;
    let key = EventKey::new(id.clone(), None).unwrap();
    let GateDecision::Issued { slot, .. } = keyspace::apply(&mut conn, &layout, "u", LONG, None).await.unwrap().0 else { panic!() };
    let asked = [("u", slot), ("u", slot + 1), ("stray", slot)];
    assert_eq!(keyspace::issued_to(&mut conn, &key, &layout, &asked).await.unwrap(), Issued::Held(vec![true, false, false]));
    let other = EventKey::new(id.clone(), Some("other-object")).unwrap();
    assert_eq!(keyspace::issued_to(&mut conn, &other, &layout, &asked).await.unwrap(), Issued::CannotTell, "another object's");
    let three = EventLayout::new(&id, 3);
    let on_home = homed_on(&three, 0, 1).remove(0);
    assert_eq!(keyspace::issued_to(&mut conn, &key, &three, &[(&on_home, slot)]).await.unwrap(), Issued::OtherLayout);
    keyspace::fence(&mut conn, &layout, 0, true).await.unwrap();
    assert_eq!(keyspace::issued_to(&mut conn, &key, &layout, &asked).await.unwrap(), Issued::CannotTell, "recovering: cannot tell");
    keyspace::delete_event(&mut conn, &id).await.unwrap();
}

/// `apply.lua` keeps a call's writes and makes them once at its end: a call must still read
/// back what it decided earlier in the same call (a lease it renewed, a slot from the free
/// list, a user named twice), and a call larger than one write may carry (Lua's `unpack`)
/// writes every user's entry and lease. Checked against the keys themselves.
#[tokio::test]
async fn a_gate_call_reads_back_its_own_writes_and_writes_them_all() {
    let mut conn = connect().await;
    let (id, layout) = event(&mut conn, &open(3000)).await;
    // Slot 1: a delivery whose lease ran out. Slot 2: given back to the free list.
    let short = Duration::from_millis(1);
    let expired = keyspace::apply(&mut conn, &layout, "lapsed", short, None).await.unwrap().0;
    assert!(matches!(expired, GateDecision::Issued { slot: 1, .. }), "{expired:?}");
    let GateDecision::Issued { slot: 2, deadline_ms, .. } = keyspace::apply(&mut conn, &layout, "gives-back", LONG, None).await.unwrap().0
    else {
        panic!()
    };
    assert!(keyspace::release(&mut conn, &layout, "gives-back", 2, deadline_ms).await.unwrap());
    tokio::time::sleep(Duration::from_millis(5)).await;

    let crowd: Vec<String> = (0..2500).map(|n| format!("crowd-{n}")).collect();
    let mut users = vec!["lapsed", "lapsed", "fresh", "fresh"];
    users.extend(crowd.iter().map(String::as_str));
    let decisions = keyspace::apply_many(&mut conn, &layout, 0, &users, LONG, None, &keyspace::unique_id()).await.unwrap().0;
    let head: Vec<(&str, i64)> = decisions[..4]
        .iter()
        .map(|decision| match decision {
            GateDecision::Issued { slot, again, .. } => (if *again { "delivered again" } else { "issued" }, *slot),
            GateDecision::Duplicate { slot, .. } => ("duplicate", *slot),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(head, vec![("delivered again", 1), ("duplicate", 1), ("issued", 2), ("duplicate", 2)]);
    for (n, decision) in decisions[4..].iter().enumerate() {
        assert!(matches!(decision, GateDecision::Issued { slot, again: false, .. } if *slot == n as i64 + 3), "crowd-{n}: {decision:?}");
    }

    use keyspace::inspect;
    let count = inspect::home_counter(&mut conn, &id, "count").await.unwrap();
    let held = inspect::home_counter(&mut conn, &id, "held").await.unwrap();
    let entries = inspect::home_entries(&mut conn, &id).await.unwrap();
    let leases = inspect::home_leases(&mut conn, &id).await.unwrap();
    assert_eq!((count, held), (2502, 2502), "counter and held after the call");
    assert_eq!(entries.len(), 2502, "one entry per holder");
    assert_eq!(leases.len(), 2502, "one lease per pending slot");
    assert_eq!(entries["lapsed"], "1:p");
    assert_eq!(entries["fresh"], "2:p");
    for (n, user) in crowd.iter().enumerate() {
        assert_eq!(entries[user], format!("{}:p", n + 3), "{user}");
    }
    let now_ms = jiff::Timestamp::now().as_millisecond();
    assert!(leases.iter().all(|(_, deadline)| *deadline > now_ms + 60_000), "every lease is the call's, the lapsed one renewed");
    keyspace::delete_event(&mut conn, &id).await.unwrap();
}

/// `per_user` above one: a user gets that many slots, each with its own ordinal, also while
/// an earlier one is still being delivered; past it they are answered HELD with all their
/// slots. An ordinal given back (a failed delivery released) is the next one handed out, so
/// the user's ordinals stay within 1..=per_user.
#[tokio::test]
async fn a_user_gets_per_user_slots_with_their_ordinals_and_then_their_slots() {
    let mut conn = connect().await;
    let (id, layout) = event(&mut conn, &EventConfig { per_user: 3, ..open(100) }).await;
    // One call with the user five times, as a crowd of their requests coalesced.
    let decisions = keyspace::apply_many(&mut conn, &layout, 0, &["q"; 5], LONG, None, &keyspace::unique_id()).await.unwrap().0;
    let issued: Vec<(i64, i64)> = decisions[..3]
        .iter()
        .map(|decision| match decision {
            GateDecision::Issued { slot, ordinal, again: false, .. } => (*slot, *ordinal),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(issued, vec![(1, 1), (2, 2), (3, 3)]);
    for decision in &decisions[3..] {
        assert_eq!(*decision, GateDecision::Duplicate { slot: 1, slots: vec![1, 2, 3] });
    }
    // The second coupon's delivery fails for certain: its slot and ordinal come back.
    let GateDecision::Issued { deadline_ms, .. } = &decisions[1] else { panic!() };
    assert!(keyspace::release(&mut conn, &layout, "q", 2, *deadline_ms).await.unwrap());
    let next = keyspace::apply(&mut conn, &layout, "q", LONG, None).await.unwrap().0;
    assert!(matches!(next, GateDecision::Issued { slot: 2, ordinal: 2, again: false, .. }), "{next:?}");
    let entries = keyspace::inspect::home_entries(&mut conn, &id).await.unwrap().remove("q").unwrap();
    assert_eq!(entries, "1:p 3:p:3 2:p:2", "the first ordinal is left out, as one coupon per user always wrote it");
    let held = keyspace::inspect::home_counter(&mut conn, &id, "held").await.unwrap();
    assert_eq!(held, 3);
    keyspace::delete_event(&mut conn, &id).await.unwrap();
}

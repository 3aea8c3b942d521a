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

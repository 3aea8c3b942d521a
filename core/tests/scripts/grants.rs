//! `grant.lua`, `close_grant.lua`, `settle_grant.lua`: stock moving between the shards of an
//! event.

use coupon_core::event::EventConfig;
use coupon_core::redis::keyspace::{self, EventLayout, GateDecision, GrantVerdict};

use crate::{connect, event, homed_on, open, LONG};

/// `grant.lua`: granted (and the same grant for the same id), nothing to give, recovering,
/// another layout. The last three are one answer to the caller (`None`): ask elsewhere.
#[tokio::test]
async fn a_grant_gives_each_of_its_answers() {
    let mut conn = connect().await;
    // Two shards of 4 coupons: shard 1's stride is slots 2 and 4.
    let (id, layout) = event(&mut conn, &EventConfig { shards: 2, ..open(4) }).await;
    let granted = keyspace::grant(&mut conn, &layout, 1, 0, 1, LONG, "g1").await.unwrap().expect("granted");
    assert_eq!(granted.slots, vec![2]);
    let again = keyspace::grant(&mut conn, &layout, 1, 0, 1, LONG, "g1").await.unwrap();
    assert_eq!(again, Some(granted.clone()), "the same id answers the recorded grant");
    let rest = keyspace::grant(&mut conn, &layout, 1, 0, 5, LONG, "g2").await.unwrap().expect("granted");
    assert_eq!(rest.slots, vec![4]);
    assert_eq!(keyspace::grant(&mut conn, &layout, 1, 0, 1, LONG, "g3").await.unwrap(), None, "nothing to give");
    let other_layout = EventLayout::new(&id, 3);
    assert_eq!(keyspace::grant(&mut conn, &other_layout, 0, 1, 1, LONG, "g4").await.unwrap(), None, "another layout");
    keyspace::fence(&mut conn, &layout, 0, true).await.unwrap();
    assert_eq!(keyspace::grant(&mut conn, &layout, 0, 1, 1, LONG, "g5").await.unwrap(), None, "being verified");
    keyspace::delete_event(&mut conn, &id).await.unwrap();
}

/// `close_grant.lua` on the target (taken, refused for good, undecided while it recovers) and
/// `settle_grant.lua` on the source (settled once).
#[tokio::test]
async fn grants_are_closed_and_settled_once() {
    let mut conn = connect().await;
    let (id, layout) = event(&mut conn, &EventConfig { shards: 2, ..open(6) }).await;
    let taken = keyspace::grant(&mut conn, &layout, 1, 0, 1, LONG, "taken").await.unwrap().unwrap();
    let user = homed_on(&layout, 0, 1).remove(0);
    let (decision, took) = keyspace::apply(&mut conn, &layout, &user, LONG, Some(&taken)).await.unwrap();
    assert!(took && matches!(decision, GateDecision::Issued { .. }), "{decision:?}");
    let untaken = keyspace::grant(&mut conn, &layout, 1, 0, 1, LONG, "untaken").await.unwrap().unwrap();
    assert_eq!(keyspace::close_grant(&mut conn, &layout, 0, &taken.id).await.unwrap(), Some(GrantVerdict::Taken));
    assert_eq!(keyspace::close_grant(&mut conn, &layout, 0, &untaken.id).await.unwrap(), Some(GrantVerdict::Refused));
    // Refused for good: the gate call that carries it late takes nothing.
    let late = homed_on(&layout, 0, 2).remove(1);
    assert!(!keyspace::apply(&mut conn, &layout, &late, LONG, Some(&untaken)).await.unwrap().1);
    for (case, grant, verdict, settled) in [
        ("taken", &taken.id, GrantVerdict::Taken, true),
        ("refused: its slots come back", &untaken.id, GrantVerdict::Refused, true),
        ("again", &untaken.id, GrantVerdict::Refused, false),
    ] {
        assert_eq!(keyspace::settle_grant(&mut conn, &layout, 1, grant, verdict).await.unwrap(), settled, "{case}");
    }
    let undecided = keyspace::grant(&mut conn, &layout, 1, 0, 1, LONG, "undecided").await.unwrap().unwrap();
    keyspace::fence(&mut conn, &layout, 0, true).await.unwrap();
    assert_eq!(keyspace::close_grant(&mut conn, &layout, 0, &undecided.id).await.unwrap(), None, "the target recovers");
    keyspace::delete_event(&mut conn, &id).await.unwrap();
}

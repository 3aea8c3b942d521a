//! `delete.lua` and `retire.lua`: removing an event's state.

use coupon_core::event::{EventConfig, EventId, EventKey};
use coupon_core::redis::keyspace::{self, GateDecision, Retirement};

use crate::{connect, event, open, unique, LONG, NAMESPACE};

/// `delete.lua` answers how many keys existed and leaves a tombstone on the home shard.
#[tokio::test]
async fn a_deletion_counts_the_keys_and_leaves_a_tombstone() {
    let mut conn = connect().await;
    let (id, layout) = event(&mut conn, &open(5)).await;
    keyspace::apply(&mut conn, &layout, "u", LONG, None).await.unwrap();
    assert!(keyspace::delete_event(&mut conn, &id).await.unwrap() >= 4, "config, count, users, unwritten, held");
    assert!(keyspace::tombstone_ttl(&mut conn, &id).await.unwrap().is_some());
    assert_eq!(keyspace::existing_keys(&mut conn, &id).await.unwrap(), 0);
}

/// Every answer of `retire.lua`, one case each.
#[tokio::test]
async fn a_retirement_gives_each_of_its_answers() {
    let mut conn = connect().await;
    let now = jiff::Timestamp::now();
    let ended = EventConfig {
        start: now - jiff::SignedDuration::from_hours(2),
        end: now - jiff::SignedDuration::from_hours(1),
        incarnation: Some("old-object".into()),
        ..open(5)
    };
    let cases = [
        ("absent", Retirement::Absent),
        ("another incarnation", Retirement::OtherIncarnation),
        ("being verified", Retirement::Recovering),
        ("still open", Retirement::StillOpen),
        ("unwritten", Retirement::Unwritten),
        ("removed", Retirement::Removed),
    ];
    for (case, expected) in cases {
        let answer = match case {
            "absent" => {
                let never = EventId::new(NAMESPACE, &unique("never")).unwrap();
                keyspace::retire_event(&mut conn, &never, Some("old-object")).await.unwrap()
            }
            "still open" => {
                let (id, _) = event(&mut conn, &EventConfig { incarnation: Some("old-object".into()), ..open(5) }).await;
                keyspace::retire_event(&mut conn, &id, Some("old-object")).await.unwrap()
            }
            _ => {
                let (id, layout) = event(&mut conn, &ended).await;
                match case {
                    "another incarnation" => keyspace::retire_event(&mut conn, &id, Some("new-object")).await.unwrap(),
                    "being verified" => {
                        keyspace::fence(&mut conn, &layout, 0, true).await.unwrap();
                        keyspace::retire_event(&mut conn, &id, Some("old-object")).await.unwrap()
                    }
                    "unwritten" | "removed" => {
                        // Issued while the window was open (written here as an entry the
                        // gate would have made), then written or not.
                        let open_again = EventConfig {
                            start: now - jiff::SignedDuration::from_hours(2),
                            end: now + jiff::SignedDuration::from_hours(1),
                            ..ended.clone()
                        };
                        keyspace::write_config(&mut conn, &id, &open_again, false).await.unwrap();
                        let GateDecision::Issued { slot, .. } = keyspace::apply(&mut conn, &layout, "u", LONG, None).await.unwrap().0
                        else {
                            panic!()
                        };
                        keyspace::write_config(&mut conn, &id, &ended, false).await.unwrap();
                        if case == "removed" {
                            let key = EventKey::new(id.clone(), Some("old-object")).unwrap();
                            keyspace::mark_written(&mut conn, &key, &layout, &[("u", slot)]).await.unwrap();
                        }
                        keyspace::retire_event(&mut conn, &id, Some("old-object")).await.unwrap()
                    }
                    _ => unreachable!(),
                }
            }
        };
        assert_eq!(answer, expected, "{case}");
    }
}

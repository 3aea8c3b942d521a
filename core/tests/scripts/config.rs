//! `provision.lua` (through `write_config`) and `fence.lua`.

use coupon_core::event::{EventConfig, EventId};
use coupon_core::redis::keyspace::{self, ConfigWrite, EventLayout, GateDecision};

use crate::{connect, open, unique, LONG, NAMESPACE};

/// Every answer of a configuration write, one case each.
#[tokio::test]
async fn a_configuration_write_gives_each_of_its_answers() {
    let mut conn = connect().await;
    let cases = [
        ("created", ConfigWrite::Created),
        ("updated", ConfigWrite::Updated),
        ("unchanged", ConfigWrite::Unchanged),
        ("created recovering", ConfigWrite::CreatedRecovering),
        ("another incarnation", ConfigWrite::RefusedOtherIncarnation),
        ("shards changed", ConfigWrite::RefusedShardsChanged { existing: 1 }),
        ("below issued", ConfigWrite::RefusedBelowIssued { issued: 2 }),
    ];
    for (case, expected) in cases {
        let id = EventId::new(NAMESPACE, &unique("config")).unwrap();
        let config = EventConfig { incarnation: Some("first-object".into()), ..open(5) };
        if case != "created" && case != "created recovering" {
            assert_eq!(keyspace::write_config(&mut conn, &id, &config, false).await.unwrap(), ConfigWrite::Created);
        }
        let layout = EventLayout::single(&id);
        let answer = match case {
            "created" => keyspace::write_config(&mut conn, &id, &config, false).await.unwrap(),
            "updated" => keyspace::write_config(&mut conn, &id, &EventConfig { limit: 6, ..config }, false).await.unwrap(),
            "unchanged" => keyspace::write_config(&mut conn, &id, &config, false).await.unwrap(),
            // The caller knows the event existed: its configuration was lost.
            "created recovering" => keyspace::write_config(&mut conn, &id, &config, true).await.unwrap(),
            "another incarnation" => {
                let other = EventConfig { incarnation: Some("second-object".into()), ..config };
                keyspace::write_config(&mut conn, &id, &other, false).await.unwrap()
            }
            "shards changed" => keyspace::write_config(&mut conn, &id, &EventConfig { shards: 2, ..config }, false).await.unwrap(),
            "below issued" => {
                for user in ["a", "b"] {
                    keyspace::apply(&mut conn, &layout, user, LONG, None).await.unwrap();
                }
                keyspace::write_config(&mut conn, &id, &EventConfig { limit: 1, ..config }, false).await.unwrap()
            }
            _ => unreachable!(),
        };
        assert_eq!(answer, expected, "{case}");
        keyspace::delete_event(&mut conn, &id).await.unwrap();
    }
}

/// `fence.lua`: no configuration, verified on this server, recovering (forced: another shard
/// of the event is).
#[tokio::test]
async fn the_fencing_check_gives_each_of_its_answers() {
    let mut conn = connect().await;
    let never = EventLayout::single(&EventId::new(NAMESPACE, &unique("never")).unwrap());
    assert_eq!(keyspace::fence(&mut conn, &never, 0, false).await.unwrap(), None, "no configuration");
    let (id, layout) = crate::event(&mut conn, &open(5)).await;
    assert_eq!(keyspace::fence(&mut conn, &layout, 0, false).await.unwrap(), Some(false), "verified");
    assert_eq!(keyspace::fence(&mut conn, &layout, 0, true).await.unwrap(), Some(true), "forced");
    assert_eq!(keyspace::fence(&mut conn, &layout, 0, false).await.unwrap(), Some(true), "stays recovering");
    assert!(matches!(keyspace::apply(&mut conn, &layout, "u", LONG, None).await.unwrap().0, GateDecision::Recovering));
    keyspace::delete_event(&mut conn, &id).await.unwrap();
}

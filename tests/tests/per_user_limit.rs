//! `perUserLimit` above one, through the api's HTTP port and the consumer into each SQL
//! dialect, against real Redis and Kafka: twelve simultaneous applies of one user with a
//! limit of three give exactly three 201s, each its own slot and row with its own ordinal;
//! the rest answer 409 with the user's slots. SQL's unique key on (event, user, ordinal)
//! refuses a fourth row of an ordinal taken, and its check an ordinal past 100. Redis lost and
//! restored from SQL, the user still holds their three and gets no fourth.

use std::collections::BTreeSet;
use std::time::Duration;

use coupon_core::event::{EventConfig, EventId};
use coupon_core::provision::{provision_redis, RedisOutcome};
use coupon_core::redis::keyspace::{self, EventLayout};
use coupon_service::sql::{CouponRow, Position, Store};
use coupon_tests::{
    kafka, kafka_brokers, migrated_store, on_every_dialect, unique, wait_for_rows, wait_until, InProcessApi, InProcessConsumer,
};
use futures::future::join_all;
use serde_json::Value;

const NAMESPACE: &str = "per-user";

async fn apply(client: &reqwest::Client, url: &str, user: &str) -> (u16, Value) {
    let body = serde_json::json!({ "userId": user }).to_string();
    let response = client.post(url).header("content-type", "application/json").body(body).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// `(user, slot, ordinal)` of every row of `event`.
async fn rows(store: &Store, event: &str) -> BTreeSet<(String, i64, i64)> {
    let mut all = BTreeSet::new();
    let mut after = 0;
    loop {
        let page = store.coupons_after(event, after, 1000).await.unwrap();
        let Some(last) = page.last() else { return all };
        after = last.1;
        all.extend(page);
    }
}

async fn three_per_user_exactly_under_a_crowd_and_after_a_restore(database_url: String) {
    let brokers = kafka_brokers();
    let name = unique("ev");
    let id = EventId::new(NAMESPACE, &name).unwrap();
    let topic = format!("coupons.{name}");
    let config = EventConfig { per_user: 3, ..EventConfig::open_now(20, &topic, Duration::from_secs(600)) };
    let mut conn = coupon_tests::redis().await;
    kafka(&brokers).admin().unwrap().ensure_topic(&topic, 2, 1).await.unwrap();
    assert_eq!(provision_redis(&mut conn, &id, &config, false).await.unwrap(), RedisOutcome::Created);
    let store = migrated_store(&database_url).await;
    let api = InProcessApi::start(NAMESPACE, &brokers).await;
    let consumer = InProcessConsumer::start_with(coupon_service::app::ConsumerSettings {
        database_url: database_url.clone(),
        kafka: kafka(&brokers),
        topics: vec![topic.clone()],
        group_id: unique("per-user"),
        batch_size: 100,
        batch_linger: Duration::from_millis(10),
        recovery_settle: Duration::from_secs(2),
        ..Default::default()
    });
    let (client, url) = (reqwest::Client::new(), api.apply_url(&id));

    let answers = join_all((0..12).map(|_| apply(&client, &url, "many"))).await;
    let issued: BTreeSet<i64> =
        answers.iter().filter(|(status, _)| *status == 201).map(|(_, body)| body["slot"].as_i64().unwrap()).collect();
    assert_eq!(answers.iter().filter(|(status, _)| *status == 201).count(), 3, "{answers:?}");
    assert_eq!(issued.len(), 3, "three distinct slots: {answers:?}");
    for (status, body) in answers.iter().filter(|(status, _)| *status != 201) {
        assert_eq!((*status, body["status"].as_str()), (409, Some("duplicate")), "{body}");
        let slot = body["slot"].as_i64().unwrap();
        assert!(issued.contains(&slot), "{body}");
        // Listed once the user holds more than one; the last ones wait for no other request.
        if let Some(slots) = body["slots"].as_array() {
            assert!(slots.iter().all(|slot| issued.contains(&slot.as_i64().unwrap())), "{body}");
        }
    }
    let (status, body) = apply(&client, &url, "many").await;
    let listed: BTreeSet<i64> = body["slots"].as_array().unwrap().iter().map(|slot| slot.as_i64().unwrap()).collect();
    assert_eq!((status, listed), (409, issued.clone()), "once settled, every slot the user holds");
    assert_eq!(apply(&client, &url, "single").await.0, 201);

    let key = id.to_string();
    wait_for_rows(&store, &key, 4, Duration::from_secs(30)).await;
    let written = rows(&store, &key).await;
    let many: BTreeSet<(i64, i64)> =
        written.iter().filter(|(user, _, _)| user == "many").map(|(_, slot, ordinal)| (*slot, *ordinal)).collect();
    assert_eq!(many.iter().map(|(slot, _)| *slot).collect::<BTreeSet<_>>(), issued);
    assert_eq!(many.iter().map(|(_, ordinal)| *ordinal).collect::<BTreeSet<_>>(), BTreeSet::from([1, 2, 3]));
    assert!(store.failed_events(&topic).await.unwrap().is_empty());

    // SQL keeps the quota itself: an ordinal the user holds under another slot clashes, and
    // an ordinal past 100 is refused; neither is written.
    store.ensure_slots(&key, 20).await.unwrap();
    let free_slot = (1..=20).find(|slot| !written.iter().any(|(_, s, _)| s == slot)).unwrap();
    let row = |ordinal| CouponRow {
        event: key.clone(),
        user_id: "many".into(),
        slot: free_slot,
        ordinal,
        issued_at: jiff::Timestamp::now(),
        mac: None,
    };
    let position = |offset| Position { topic: format!("{topic}.manual"), partition: 0, offset };
    let outcome = store.write_batch(&[(row(2), position(1))], &[]).await.unwrap();
    assert_eq!((outcome.inserted, outcome.conflicts.len()), (0, 1), "a second row of ordinal 2");
    assert!(store.write_batch(&[(row(101), position(2))], &[]).await.map(|o| o.inserted).unwrap_or(0) == 0, "ordinal 101");
    assert_eq!(rows(&store, &key).await, written);

    // Redis loses the event; written back recovering, the consumer restores it from SQL.
    let layout = EventLayout::single(&id);
    keyspace::delete_event_shard_for_tests(&mut conn, &layout, 0).await.unwrap();
    assert_eq!(provision_redis(&mut conn, &id, &config, true).await.unwrap(), RedisOutcome::CreatedRecovering);
    wait_until("restored from SQL", Duration::from_secs(60), || {
        let (mut conn, id) = (conn.clone(), id.clone());
        async move { (!keyspace::counters(&mut conn, &id).await.unwrap().unwrap().recovering).then_some(()) }
    })
    .await;
    let restored = wait_until("the api answers from the restored state", Duration::from_secs(20), || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let answer = apply(&client, &url, "many").await;
            (answer.0 != 503).then_some(answer)
        }
    })
    .await;
    let listed: BTreeSet<i64> = restored.1["slots"].as_array().unwrap().iter().map(|slot| slot.as_i64().unwrap()).collect();
    assert_eq!((restored.0, listed), (409, issued), "the user's three, restored, and no fourth");
    consumer.stop().await.unwrap();
}

on_every_dialect!(three_per_user, three_per_user_exactly_under_a_crowd_and_after_a_restore);

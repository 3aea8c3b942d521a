//! Coupons that cannot be forged while Redis cannot vouch for them: with a key file shared by
//! the api and the consumer (`RECORD_KEYS_FILE`), the api signs every record, and a consumer
//! that requires signatures (`RECORD_SIGNATURES_REQUIRED`) refuses what no api signed when
//! Redis, having lost the event, cannot tell whether a gate issued it. Where Redis can tell,
//! it decides, signed or not. Real Redis, broker and PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use coupon_core::event::{CouponRecord, EventConfig, RecordKeys, Signature};
use coupon_core::provision::{provision_redis, RedisOutcome};
use coupon_core::redis::keyspace::{self, EventLayout};
use coupon_core::redis::RedisHandle;
use coupon_service::app::{ApiSettings, ConsumerSettings};
use coupon_tests::*;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

const NAMESPACE: &str = "signing";
const KEYS: &str = "k1=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
/// A key the consumer does not know (yet): another step of a rotation.
const NEWER: &str = "k2=ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

async fn produce(topic: &str, payload: &[u8]) {
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create().unwrap();
    producer.send(FutureRecord::to(topic).key("k").payload(payload), Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
}

fn keys() -> Arc<RecordKeys> {
    Arc::new(RecordKeys::parse(KEYS).unwrap())
}

async fn start_api(keys: Option<Arc<RecordKeys>>) -> InProcessApi {
    InProcessApi::start_ready(ApiSettings {
        namespace: NAMESPACE.into(),
        redis_url: redis_url(),
        kafka: kafka(&kafka_brokers()),
        record_keys: keys,
        ..ApiSettings::default()
    })
    .await
}

/// A consumer with the keys that requires signatures, on `topic`; no restore from SQL within
/// a test (Redis cannot tell for as long as an event is recovering).
fn start_consumer(database_url: &str, topic: &str) -> InProcessConsumer {
    InProcessConsumer::start_with(ConsumerSettings {
        database_url: database_url.into(),
        redis_url: redis_url(),
        kafka: kafka(&kafka_brokers()),
        topics: vec![topic.into()],
        group_id: unique("signing"),
        batch_linger: Duration::from_millis(10),
        recovery_settle: Duration::from_secs(600),
        record_keys: Some(keys()),
        signatures_required: true,
        ..ConsumerSettings::default()
    })
}

/// An unsigned record of `user`'s coupon `slot` of `event`, issued now.
fn record(event: &TestEvent, user: &str, slot: i64) -> CouponRecord {
    CouponRecord { event: event.key(), user_id: user.into(), slot, ordinal: 1, issued_at: jiff::Timestamp::now(), mac: None }
}

fn json(record: &CouponRecord) -> Vec<u8> {
    serde_json::to_vec(record).unwrap()
}

async fn sorted_reasons(store: &coupon_service::sql::Store, topic: &str) -> Vec<String> {
    let mut reasons: Vec<String> = store.failed_events(topic).await.unwrap().into_iter().map(|f| f.reason).collect();
    reasons.sort();
    reasons
}

/// The api signs its records; then Redis loses the event and it is written back recovering.
/// On the topic meanwhile: the api's signed record (a genuine coupon whose entry Redis lost),
/// a well-formed unsigned record from whoever can write to the topic, and one with a forged
/// signature. The signed one gets its row; the other two go to failed_events with their
/// reasons. Without required signatures the unsigned one would have been written (judged
/// against the limit only).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn while_redis_cannot_tell_only_records_an_api_signed_are_written() {
    let event = provision_event(&kafka_brokers(), NAMESPACE, 10, 1).await;
    let api = start_api(Some(keys())).await;
    assert_eq!(apply(&reqwest::Client::new(), &api.apply_url(&event.id), "alice").await.0, 201);
    let signed = first_record_on(&event.topic);
    assert_eq!(keys().verify(&signed), Signature::Valid, "the api signs: {signed:?}");

    // Redis loses the event; the operator writes its configuration back, recovering.
    let mut conn = RedisHandle::connect_with_deadline(redis_url(), Duration::from_secs(10)).await.unwrap();
    keyspace::delete_event_shard_for_tests(&mut conn, &EventLayout::single(&event.id), 0).await.unwrap();
    let config = EventConfig::open_now(10, &event.topic, Duration::from_secs(600));
    assert_eq!(provision_redis(&mut conn, &event.id, &config, true).await.unwrap(), RedisOutcome::CreatedRecovering);
    let unsigned =
        CouponRecord { event: event.key(), user_id: "mallory".into(), slot: 2, ordinal: 1, issued_at: signed.issued_at, mac: None };
    produce(&event.topic, &json(&unsigned)).await;
    let forged = CouponRecord { user_id: "eve".into(), slot: 3, mac: signed.mac.clone(), ..unsigned.clone() };
    produce(&event.topic, &json(&forged)).await;

    let database_url = postgres_url();
    let store = migrated_store(&database_url).await;
    let consumer = start_consumer(&database_url, &event.topic);
    wait_until("both unsigned records refused", Duration::from_secs(30), || async {
        (store.failed_events(&event.topic).await.unwrap().len() == 2).then_some(())
    })
    .await;
    wait_for_rows(&store, &event.key(), 1, Duration::from_secs(30)).await;
    let rows = store.coupons(&event.key()).await.unwrap();
    assert_eq!(rows, vec![("alice".to_owned(), signed.slot)], "only the signed coupon is written");
    let reasons = sorted_reasons(&store, &event.topic).await;
    assert!(reasons[0].contains("its mac does not verify") && reasons[0].contains("Redis cannot tell"), "{reasons:?}");
    assert!(reasons[1].starts_with("unsigned, while Redis cannot tell"), "{reasons:?}");
    // The refused record is kept as it came, signature included.
    let kept: CouponRecord = serde_json::from_slice(
        &store.failed_events(&event.topic).await.unwrap().into_iter().find(|f| f.reason == reasons[0]).unwrap().payload,
    )
    .unwrap();
    assert_eq!(kept, forged);
    consumer.stop().await.unwrap();
}

/// Where Redis can tell whether a gate issued a record, it decides, signed or not, also with
/// signatures required: an api without the keys yet (a rollout) and a key the consumer does
/// not know yet (a rotation) cost no coupon, and a valid signature does not take a slot its
/// user does not hold (one healing gave to someone else, say).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn where_redis_can_tell_it_decides_signed_or_not() {
    let event = provision_event(&kafka_brokers(), NAMESPACE, 10, 1).await;
    let database_url = postgres_url();
    let store = migrated_store(&database_url).await;
    let consumer = start_consumer(&database_url, &event.topic);
    // An api that does not sign yet.
    let api = start_api(None).await;
    assert_eq!(apply(&reqwest::Client::new(), &api.apply_url(&event.id), "bob").await.0, 201);
    wait_for_rows(&store, &event.key(), 1, Duration::from_secs(30)).await;

    // The gate issues "carol" a slot; her record is signed with a key the consumer does not
    // know yet. "dave" holds nothing, yet his record is signed with the consumer's key.
    let mut conn = RedisHandle::connect_with_deadline(redis_url(), Duration::from_secs(10)).await.unwrap();
    let layout = EventLayout::single(&event.id);
    let (decision, _) = keyspace::apply(&mut conn, &layout, "carol", Duration::from_secs(600), None).await.unwrap();
    let keyspace::GateDecision::Issued { slot, .. } = decision else { panic!("{decision:?}") };
    let newer = RecordKeys::parse(NEWER).unwrap();
    produce(&event.topic, &json(&newer.sign(record(&event, "carol", slot)))).await;
    produce(&event.topic, &json(&keys().sign(record(&event, "dave", 7)))).await;
    wait_for_rows(&store, &event.key(), 2, Duration::from_secs(30)).await;
    wait_until("dave's record refused", Duration::from_secs(30), || async {
        (store.failed_events(&event.topic).await.unwrap().len() == 1).then_some(())
    })
    .await;
    let rows = store.coupons(&event.key()).await.unwrap();
    assert!(rows.contains(&("carol".to_owned(), slot)) && rows.len() == 2, "{rows:?}");
    assert_eq!(sorted_reasons(&store, &event.topic).await, vec!["slot 7 was not issued to this user".to_owned()]);
    consumer.stop().await.unwrap();
}

/// Redis lost the event's configuration altogether (not written back yet) after some of its
/// coupons were written, so its slot rows exist: an unsigned record within them is refused,
/// a signed one is written. (Before, any record within the slot rows was written unchecked.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_configuration_lets_in_only_signed_records() {
    let event = provision_event(&kafka_brokers(), NAMESPACE, 10, 1).await;
    let database_url = postgres_url();
    let store = migrated_store(&database_url).await;
    let consumer = start_consumer(&database_url, &event.topic);
    let api = start_api(Some(keys())).await;
    assert_eq!(apply(&reqwest::Client::new(), &api.apply_url(&event.id), "alice").await.0, 201);
    wait_for_rows(&store, &event.key(), 1, Duration::from_secs(30)).await;

    let mut conn = RedisHandle::connect_with_deadline(redis_url(), Duration::from_secs(10)).await.unwrap();
    keyspace::delete_event_shard_for_tests(&mut conn, &EventLayout::single(&event.id), 0).await.unwrap();
    produce(&event.topic, &json(&record(&event, "mallory", 5))).await;
    produce(&event.topic, &json(&keys().sign(record(&event, "dave", 6)))).await;
    wait_for_rows(&store, &event.key(), 2, Duration::from_secs(30)).await;
    wait_until("mallory's record refused", Duration::from_secs(30), || async {
        (store.failed_events(&event.topic).await.unwrap().len() == 1).then_some(())
    })
    .await;
    let rows = store.coupons(&event.key()).await.unwrap();
    assert!(rows.contains(&("dave".to_owned(), 6)) && rows.len() == 2, "{rows:?}");
    let reasons = sorted_reasons(&store, &event.topic).await;
    assert!(reasons[0].starts_with("unsigned, while Redis cannot tell"), "{reasons:?}");
    consumer.stop().await.unwrap();
}

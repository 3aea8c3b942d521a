//! Coupons that cannot be forged while Redis cannot vouch for them: with a key file shared by
//! the api and the consumer (`RECORD_KEYS_FILE`), the api signs every record, and the
//! consumer refuses what no api signed when Redis, having lost the event, cannot tell whether
//! a gate issued it. Real Redis, broker and PostgreSQL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use coupon_core::event::{CouponRecord, EventConfig, RecordKeys, Signature};
use coupon_core::provision::{provision_redis, RedisOutcome};
use coupon_core::redis::keyspace::{self, EventLayout};
use coupon_core::redis::RedisHandle;
use coupon_service::app::{ApiSettings, ConsumerSettings};
use coupon_tests::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};

const NAMESPACE: &str = "signing";
const KEYS: &str = "k1=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// The first record on `topic`, read from the beginning.
fn first_record(topic: &str) -> CouponRecord {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", unique("signing"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            return serde_json::from_slice(message.payload().unwrap()).unwrap();
        }
    }
    panic!("no record on {topic}");
}

async fn produce(topic: &str, payload: &[u8]) {
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create().unwrap();
    producer.send(FutureRecord::to(topic).key("k").payload(payload), Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
}

/// The api signs its records; then Redis loses the event and it is written back recovering
/// (the consumer cannot check entries until it restores from SQL, which waits here longer
/// than the test). On the topic meanwhile: the api's signed record (a genuine coupon whose
/// entry Redis lost), a well-formed unsigned record from whoever can write to the topic, and
/// one with a forged signature. The signed one gets its row; the other two go to
/// failed_events with their reasons. Without keys the unsigned one would have been written
/// (judged against the limit only).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn while_redis_cannot_tell_only_records_an_api_signed_are_written() {
    let keys = Arc::new(RecordKeys::parse(KEYS).unwrap());
    let event = provision_event(&kafka_brokers(), NAMESPACE, 10, 1).await;
    let api = InProcessApi::start_ready(ApiSettings {
        namespace: NAMESPACE.into(),
        redis_url: redis_url(),
        kafka: kafka(&kafka_brokers()),
        record_keys: Some(keys.clone()),
        ..ApiSettings::default()
    })
    .await;
    assert_eq!(apply(&reqwest::Client::new(), &api.apply_url(&event.id), "alice").await.0, 201);
    let signed = first_record(&event.topic);
    assert_eq!(keys.verify(&signed), Signature::Valid, "the api signs: {signed:?}");

    // Redis loses the event; the operator writes its configuration back, recovering.
    let mut conn = RedisHandle::connect_with_deadline(redis_url(), Duration::from_secs(10)).await.unwrap();
    keyspace::delete_event_shard_for_tests(&mut conn, &EventLayout::single(&event.id), 0).await.unwrap();
    let config = EventConfig::open_now(10, &event.topic, Duration::from_secs(600));
    assert_eq!(provision_redis(&mut conn, &event.id, &config, true).await.unwrap(), RedisOutcome::CreatedRecovering);
    let unsigned = CouponRecord { event: event.key(), user_id: "mallory".into(), slot: 2, issued_at: signed.issued_at, mac: None };
    produce(&event.topic, &serde_json::to_vec(&unsigned).unwrap()).await;
    let forged = CouponRecord { user_id: "eve".into(), slot: 3, mac: signed.mac.clone(), ..unsigned.clone() };
    produce(&event.topic, &serde_json::to_vec(&forged).unwrap()).await;

    let database_url = postgres_url();
    let store = migrated_store(&database_url).await;
    let consumer = InProcessConsumer::start_with(ConsumerSettings {
        database_url: database_url.clone(),
        redis_url: redis_url(),
        kafka: kafka(&kafka_brokers()),
        topics: vec![event.topic.clone()],
        group_id: unique("signing"),
        batch_linger: Duration::from_millis(10),
        // No restore within the test: Redis cannot tell throughout.
        recovery_settle: Duration::from_secs(600),
        record_keys: Some(keys),
        ..ConsumerSettings::default()
    });
    wait_until("both unsigned records refused", Duration::from_secs(30), || async {
        (store.failed_events(&event.topic).await.unwrap().len() == 2).then_some(())
    })
    .await;
    wait_for_rows(&store, &event.key(), 1, Duration::from_secs(30)).await;
    let rows = store.coupons(&event.key()).await.unwrap();
    assert_eq!(rows, vec![("alice".to_owned(), signed.slot)], "only the signed coupon is written");
    let mut reasons: Vec<String> = store.failed_events(&event.topic).await.unwrap().into_iter().map(|f| f.reason).collect();
    reasons.sort();
    assert!(reasons[0].contains("not issued by an api") && reasons[0].contains("does not verify"), "{reasons:?}");
    assert!(reasons[1].contains("unsigned, while Redis cannot tell"), "{reasons:?}");
    consumer.stop().await.unwrap();
}

//! One event's trouble stays that event's: a configuration Redis lost holds that event's
//! records only, poison of any size never stalls a partition, and a stray record cannot make
//! the consumer write slot rows no gate could have needed.

use std::time::Duration;

use coupon_core::event::{EventConfig, EventId};
use coupon_core::provision::{provision_redis, RedisOutcome};
use coupon_core::redis::keyspace::{self, EventLayout};
use coupon_core::redis::RedisHandle;
use coupon_service::app::{ApiSettings, ConsumerSettings};
use coupon_service::sql::Store;
use coupon_tests::*;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

const NAMESPACE: &str = "isolation";

fn consumer_settings(database_url: &str, topic: &str) -> ConsumerSettings {
    ConsumerSettings {
        database_url: database_url.into(),
        redis_url: redis_url(),
        kafka: kafka(&kafka_brokers()),
        topics: vec![topic.into()],
        group_id: unique("isolation"),
        batch_linger: Duration::from_millis(10),
        recovery_settle: Duration::from_secs(2),
        // Far longer than the test: a held record is never failed for waiting here.
        missing_event_patience: Duration::from_secs(600),
        ..ConsumerSettings::default()
    }
}

async fn start_api() -> InProcessApi {
    InProcessApi::start_ready(ApiSettings {
        namespace: NAMESPACE.into(),
        redis_url: redis_url(),
        kafka: kafka(&kafka_brokers()),
        ..ApiSettings::default()
    })
    .await
}

fn raw_producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.max.bytes", "2000000")
        .create()
        .unwrap()
}

async fn produce(producer: &FutureProducer, topic: &str, payload: &[u8]) {
    producer.send(FutureRecord::to(topic).key("k").payload(payload), Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
}

fn record(event: &str, user: &str, slot: i64) -> Vec<u8> {
    format!(r#"{{"event":"{event}","userId":"{user}","slot":{slot},"issuedAt":"2026-12-07T10:00:00Z"}}"#).into_bytes()
}

async fn failure_reasons(store: &Store, topic: &str) -> Vec<String> {
    store.failed_events(topic).await.unwrap().into_iter().map(|f| f.reason).collect()
}

/// Two events sell on one topic. Redis loses the first one's configuration while a record
/// of it is on its way: that record waits for the configuration to come back, and the second
/// event's coupons are written meanwhile (the whole batch, every partition and every event,
/// waited with it, up to an hour).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_configuration_holds_only_its_own_event() {
    let brokers = kafka_brokers();
    let lost = provision_event(&brokers, NAMESPACE, 10, 2).await;
    let mut conn = RedisHandle::connect_with_deadline(redis_url(), Duration::from_secs(10)).await.unwrap();
    let other = TestEvent { id: EventId::new(NAMESPACE, &unique("other")).unwrap(), topic: lost.topic.clone(), limit: 10 };
    let config = |limit| EventConfig::open_now(limit, &lost.topic, Duration::from_secs(600));
    assert_eq!(provision_redis(&mut conn, &other.id, &config(10), false).await.unwrap(), RedisOutcome::Created);

    let database_url = postgres_url();
    let store = migrated_store(&database_url).await;
    let consumer = InProcessConsumer::start_with(consumer_settings(&database_url, &lost.topic));
    let api = start_api().await;
    let client = reqwest::Client::new();

    // Redis loses the first event before any of its coupons was written (SQL has no slot
    // rows for it either); its first coupon is on its way.
    keyspace::delete_event_shard_for_tests(&mut conn, &EventLayout::single(&lost.id), 0).await.unwrap();
    produce(&raw_producer(), &lost.topic, &record(&lost.key(), "early", 1)).await;

    // The other event's coupons, after it on the same topic and partitions, are written.
    for n in 0..6 {
        assert_eq!(apply(&client, &api.apply_url(&other.id), &format!("b{n}")).await.0, 201);
    }
    wait_for_rows(&store, &other.key(), 6, Duration::from_secs(20)).await;
    assert_eq!(store.count_coupons(&lost.key()).await.unwrap(), 0, "its coupon waits for its configuration");

    // The configuration comes back (recovering, as the operator writes it back): the held
    // record is written, and nothing went to failed_events.
    assert_eq!(provision_redis(&mut conn, &lost.id, &config(10), true).await.unwrap(), RedisOutcome::CreatedRecovering);
    wait_for_rows(&store, &lost.key(), 1, Duration::from_secs(30)).await;
    assert_eq!(failure_reasons(&store, &lost.topic).await, Vec::<String>::new());
    consumer.stop().await.unwrap();
}

/// Twenty poison records of 900 kB each, more than MariaDB takes in one statement
/// (`max_allowed_packet`, 16 MiB): each lands in failed_events byte for byte, and the good
/// record after them is written (one multi-row INSERT was refused by the server, not taken
/// for a data error, and retried for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_larger_than_a_statement_lands_in_failed_events() {
    const POISON: usize = 20;
    let event = provision_event(&kafka_brokers(), NAMESPACE, 10, 1).await;
    assert_eq!(issue(&event, &["after"]).await, vec![1]);
    let producer = raw_producer();
    let poison: Vec<Vec<u8>> = (0..POISON).map(|n| vec![b'a' + n as u8; 900_000]).collect();
    for payload in &poison {
        produce(&producer, &event.topic, payload).await;
    }
    produce(&producer, &event.topic, &record(&event.key(), "after", 1)).await;

    let database_url = mysql_url();
    let store = migrated_store(&database_url).await;
    // One batch holds them all.
    let consumer = InProcessConsumer::start_with(ConsumerSettings {
        batch_linger: Duration::from_secs(3),
        ..consumer_settings(&database_url, &event.topic)
    });
    wait_for_rows(&store, &event.key(), 1, Duration::from_secs(60)).await;
    let failed = store.failed_events(&event.topic).await.unwrap();
    assert_eq!(failed.into_iter().map(|f| f.payload).collect::<Vec<_>>(), poison, "every poison record kept byte for byte");
    consumer.stop().await.unwrap();
}

/// A well-formed record that no gate issued, naming a slot far beyond what was handed out
/// (in range of the limit): refused, and the slot rows do not grow towards it (the consumer
/// wrote slot rows up to the record's slot, up to 100 million of them).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stray_record_with_a_far_slot_is_refused_without_growing_slot_rows() {
    const LIMIT: i64 = 100_000_000;
    let brokers = kafka_brokers();
    let event = provision_event(&brokers, NAMESPACE, LIMIT, 1).await;
    let database_url = postgres_url();
    let store = migrated_store(&database_url).await;
    let consumer = InProcessConsumer::start_with(consumer_settings(&database_url, &event.topic));
    let api = start_api().await;
    let client = reqwest::Client::new();
    assert_eq!(apply(&client, &api.apply_url(&event.id), "real").await.0, 201);

    let producer = raw_producer();
    produce(&producer, &event.topic, &record(&event.key(), "stray", 99_999_999)).await;
    produce(&producer, &event.topic, &record(&event.key(), "real", 7_654_321)).await;
    wait_until("both stray records refused", Duration::from_secs(30), || async {
        (failure_reasons(&store, &event.topic).await.len() == 2).then_some(())
    })
    .await;
    let reasons = failure_reasons(&store, &event.topic).await;
    assert!(reasons.iter().all(|r| r.contains("not issued")), "{reasons:?}");
    wait_for_rows(&store, &event.key(), 1, Duration::from_secs(30)).await;
    assert!(store.slot_capacity(&event.key()).await.unwrap() <= 10_000, "slot rows stay one step");
    consumer.stop().await.unwrap();
}

/// Whoever can produce to the topic writes well-formed records: one for a slot another user
/// was issued and whose record is still on its way, one for a slot nobody was issued, both
/// well within the slot rows. Both are refused ("not issued"), and the holder's own record
/// gets its row (the forged one took the slot's row, the holder's record then conflicted,
/// and a restore from SQL would have made the forgery permanent).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_record_within_the_slot_rows_is_refused_and_the_holder_keeps_the_slot() {
    let brokers = kafka_brokers();
    let event = provision_event(&brokers, NAMESPACE, 10, 1).await;
    let database_url = postgres_url();
    let store = migrated_store(&database_url).await;
    let consumer = InProcessConsumer::start_with(consumer_settings(&database_url, &event.topic));
    let api = start_api().await;
    let client = reqwest::Client::new();
    assert_eq!(apply(&client, &api.apply_url(&event.id), "first").await.0, 201);
    wait_for_rows(&store, &event.key(), 1, Duration::from_secs(30)).await;

    // The gate issues slot 2 to "holder"; their record is not produced yet.
    let mut conn = RedisHandle::connect_with_deadline(redis_url(), Duration::from_secs(10)).await.unwrap();
    let layout = EventLayout::single(&event.id);
    let (decision, _) = keyspace::apply(&mut conn, &layout, "holder", Duration::from_secs(600), None).await.unwrap();
    assert!(matches!(decision, keyspace::GateDecision::Issued { slot: 2, .. }), "{decision:?}");
    let producer = raw_producer();
    produce(&producer, &event.topic, &record(&event.key(), "mallory", 2)).await;
    produce(&producer, &event.topic, &record(&event.key(), "eve", 5)).await;
    produce(&producer, &event.topic, &record(&event.key(), "holder", 2)).await;
    wait_for_rows(&store, &event.key(), 2, Duration::from_secs(30)).await;
    wait_until("both forged records refused", Duration::from_secs(30), || async {
        (failure_reasons(&store, &event.topic).await.len() == 2).then_some(())
    })
    .await;
    let reasons = failure_reasons(&store, &event.topic).await;
    assert!(reasons.iter().all(|r| r.contains("not issued")), "{reasons:?}");
    let rows: Vec<(String, i64)> = store.coupons(&event.key()).await.unwrap();
    assert!(rows.contains(&("holder".to_owned(), 2)), "{rows:?}");
    assert_eq!(rows.len(), 2, "{rows:?}");
    consumer.stop().await.unwrap();
}

//! What a step of Redis' clock can do to the consumer's judgement. Delivery deadlines and
//! recovering marks are Redis server time; a step forward makes deliveries still under way
//! look long overdue. The consumer gives an entry back only after its own monotonic clock
//! waited the settle time since it first saw the entry overdue (docs/exactness.md, "Clocks,
//! deposed masters and slot migrations").

use std::time::{Duration, Instant};

use coupon_core::redis::keyspace::{self, EventLayout, GateDecision};
use coupon_core::redis::RedisHandle;
use coupon_service::app::ConsumerSettings;
use coupon_tests::*;

const NAMESPACE: &str = "clock";
const SETTLE: Duration = Duration::from_secs(3);

/// An entry whose deadline is already far behind Redis' clock the first time the consumer
/// looks (as after a forward step of that clock while its delivery was under way) is given
/// back no sooner than the settle time after the consumer started: it trusted Redis' clock
/// alone and gave it back at its second pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healing_waits_its_own_settle_time_whatever_the_redis_clock_says() {
    let brokers = kafka_brokers();
    let event = provision_event(&brokers, NAMESPACE, 10, 1).await;
    let layout = EventLayout::single(&event.id);
    let mut conn = RedisHandle::connect_with_deadline(redis_url(), Duration::from_secs(10)).await.unwrap();
    // Issued with a 1 ms lease and never produced.
    let (decision, _) = keyspace::apply(&mut conn, &layout, "stepped", Duration::from_millis(1), None).await.unwrap();
    let GateDecision::Issued { deadline_ms, .. } = decision else { panic!("{decision:?}") };
    // By Redis' clock the entry is overdue by more than the settle time.
    wait_until("the deadline long past on Redis' clock", Duration::from_secs(30), || {
        let mut conn = conn.clone();
        async move { (keyspace::server_time_ms(&mut conn).await.unwrap() > deadline_ms + SETTLE.as_millis() as i64 + 200).then_some(()) }
    })
    .await;

    let database_url = postgres_url();
    migrated_store(&database_url).await;
    let started = Instant::now();
    let consumer = InProcessConsumer::start_with(ConsumerSettings {
        database_url,
        redis_url: redis_url(),
        kafka: kafka(&brokers),
        topics: vec![event.topic.clone()],
        group_id: unique("clock"),
        recovery_settle: SETTLE,
        ..ConsumerSettings::default()
    });
    wait_until("the entry given back", Duration::from_secs(60), || {
        let (mut conn, id) = (conn.clone(), event.id.clone());
        async move { (keyspace::counters(&mut conn, &id).await.unwrap()?.healed == 1).then_some(()) }
    })
    .await;
    let took = started.elapsed();
    assert!(took >= SETTLE, "given back {took:?} after the consumer started, on Redis' clock alone");
    consumer.stop().await.unwrap();
}

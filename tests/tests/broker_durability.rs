//! The broker alone, restarted while it takes writes: what a record it acknowledged is worth
//! after a restart on durable storage. The system's promise ("every 201 has exactly one
//! row") rests on an acknowledged record surviving; this checks whether tansu's SQLite
//! storage keeps that, with no code of ours between the producer and the broker.
//!
//! It does not, in tansu 0.6.0 (the broker the tests use): after a restart, killed or
//! stopped cleanly, the first produce of an idempotent producer that goes on with its
//! producer id (as librdkafka does) panics in the storage (`Delegate::idempotent_message_check`,
//! `query_one`: "more or less than one row", tansu-storage 0.6.0 `src/lite.rs:503`), and from
//! then on the broker answers nothing, so no record, old or new, can be read; in other runs
//! the acknowledgements after the restart carry offsets counted again from 0 (and -1) while
//! the records are stored after the earlier ones. This is why
//! `faults::broker_killed_and_restarted_on_durable_storage_mid_burst_every_201_has_exactly_one_row`
//! failed now and then (0 rows; fewer rows than 201s). Both tests are ignored, with this
//! reason, until the broker is fixed; run them with `-- --ignored`
//! (docs/reliability.md, "The broker").

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use coupon_tests::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

/// Produces numbered records for `duration`, 32 in flight at a time, and returns the ones
/// the broker acknowledged, by number, with their (partition, offset).
async fn produce_for(producer: &FutureProducer, topic: &str, start: usize, duration: Duration) -> BTreeMap<usize, (i32, i64)> {
    use futures::stream::{self, StreamExt};
    let until = Instant::now() + duration;
    let acked = stream::iter(start..)
        .take_while(|_| std::future::ready(Instant::now() < until))
        .map(|n| async move {
            let payload = format!("record-{n}");
            let sent = producer.send(FutureRecord::to(topic).key(&payload).payload(&payload), Duration::from_secs(2)).await;
            sent.ok().map(|delivered| (n, (delivered.partition, delivered.offset)))
        })
        .buffer_unordered(32)
        .filter_map(std::future::ready)
        .collect::<Vec<_>>()
        .await;
    acked.into_iter().collect()
}

/// Every payload on the topic, read from the beginning, with its (partition, offset).
fn read_all(brokers: &str, topic: &str) -> BTreeMap<String, (i32, i64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("durability"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut seen = BTreeMap::new();
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(5) {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            let payload = String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned();
            seen.insert(payload, (message.partition(), message.offset()));
            quiet_since = Instant::now();
        }
    }
    seen
}

/// Records acknowledged around a SIGKILL are all there after the restart, at the offsets the
/// broker acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "tansu 0.6.0's SQLite storage panics after a restart on an idempotent producer's next produce (see the module's doc)"]
async fn records_acknowledged_around_a_kill_survive_the_restart() {
    acknowledged_records_survive(Stop::Kill).await;
}

/// The same with a clean stop (SIGTERM): the broker has every chance to finish its writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "tansu 0.6.0's SQLite storage panics after a restart on an idempotent producer's next produce (see the module's doc)"]
async fn records_acknowledged_around_a_clean_stop_survive_the_restart() {
    acknowledged_records_survive(Stop::Clean).await;
}

enum Stop {
    Kill,
    Clean,
}

async fn acknowledged_records_survive(stop: Stop) {
    let mut tansu = OwnTansu::start_durable(free_port()).await;
    let brokers = tansu.brokers();
    let topic = unique("durability");
    kafka(&brokers).admin().unwrap().ensure_topic(&topic, 2, 1).await.unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "2000")
        .set("linger.ms", "5")
        .create()
        .unwrap();

    let before = produce_for(&producer, &topic, 0, Duration::from_secs(2)).await;
    let kill = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        match stop {
            Stop::Kill => tansu.stop().await,
            Stop::Clean => tansu.stop_gracefully().await,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        tansu.restart().await;
    };
    let (around, ()) = tokio::join!(produce_for(&producer, &topic, 1_000_000, Duration::from_secs(3)), kill);
    let after = produce_for(&producer, &topic, 2_000_000, Duration::from_secs(1)).await;

    let seen = read_all(&brokers, &topic);
    let mut lost = Vec::new();
    let mut moved = Vec::new();
    for (n, acked_at) in before.iter().chain(around.iter()).chain(after.iter()) {
        match seen.get(&format!("record-{n}")) {
            None => lost.push((*n, *acked_at)),
            Some(at) if at != acked_at => moved.push((*n, *acked_at, *at)),
            Some(_) => {}
        }
    }
    eprintln!(
        "acknowledged: {} before, {} around, {} after the kill; on the topic: {}; lost: {}; at another offset: {}",
        before.len(),
        around.len(),
        after.len(),
        seen.len(),
        lost.len(),
        moved.len()
    );
    if !lost.is_empty() {
        let log = tansu.log_text();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        eprintln!("tansu after the restart:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    assert!(lost.is_empty(), "{} acknowledged records lost, first {:?}", lost.len(), &lost[..lost.len().min(10)]);
    assert!(moved.is_empty(), "{} records at another offset than acknowledged, first {:?}", moved.len(), &moved[..moved.len().min(10)]);
    tansu.stop().await;
}

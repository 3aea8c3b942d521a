//! `coupon-service event create --every`: a recurring event without Kubernetes, the real
//! binary against real Redis, Kafka and SQL. Each run provisions the occurrence in effect as
//! a sale of its own; the one before makes way only once it is over and written.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use coupon_core::event::EventId;
use coupon_core::redis::keyspace;
use coupon_service::app::ConsumerSettings;
use coupon_tests::{apply, kafka, kafka_brokers, redis_url, unique, InProcessApi, InProcessConsumer};
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

const NAMESPACE: &str = "cli-recurring";

fn cli(args: &[&str], database_url: &str) -> Output {
    let binary = Path::new(env!("CARGO_BIN_EXE_coupon-service-under-test"));
    std::process::Command::new(binary)
        .args(args)
        .env("REDIS_URL", redis_url())
        .env("KAFKA_BROKERS", kafka_brokers())
        .env("COUPON_NAMESPACE", NAMESPACE)
        .env("DATABASE_URL", database_url)
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The start of the minute `at` is in.
fn minute_of(at: Timestamp) -> Timestamp {
    Timestamp::from_second(at.as_second() - at.as_second().rem_euclid(60)).unwrap()
}

async fn sleep_until(at: Timestamp) {
    let left = at.duration_since(Timestamp::now()).as_millis().max(0) as u64;
    tokio::time::sleep(Duration::from_millis(left)).await;
}

/// Every minute for 30 seconds, two coupons each: the first run provisions the minute under
/// way, keyed by it; run again, it keeps it; after its end it refuses while its coupons are
/// unwritten and changes nothing; once they are written, the next minute is a new sale where
/// the same users win again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_run_provisions_the_occurrence_in_effect_once_the_one_before_is_written() {
    let (name, database) = (unique("every"), coupon_tests::sqlite_url());
    let store = coupon_tests::migrated_store(&database).await;
    let topic = format!("cli.{name}");
    let id = EventId::new(NAMESPACE, &name).unwrap();
    let create = [
        "event",
        "create",
        &name,
        "--every",
        "* * * * *",
        "--time-zone",
        "Europe/Berlin",
        "--duration",
        "30s",
        "--limit",
        "2",
        "--topic",
        &topic,
        "--partitions",
        "1",
    ];
    // Early in a minute, so that its occurrence is under way and has time left.
    if Timestamp::now().as_second().rem_euclid(60) > 15 {
        sleep_until(minute_of(Timestamp::now()) + SignedDuration::from_secs(61)).await;
    }
    let first = minute_of(Timestamp::now());
    let created = cli(&create, &database);
    assert!(created.status.success(), "{}", stderr(&created));
    let printed: Value = serde_json::from_slice(&created.stdout).unwrap();
    let first_key = format!("{NAMESPACE}/{name}@o{}", first.as_second());
    assert_eq!(printed["key"], first_key.as_str());
    let mut redis = coupon_tests::redis().await;
    let counters = keyspace::counters(&mut redis, &id).await.unwrap().unwrap();
    assert_eq!((counters.start_ms, counters.end_ms), (first.as_millisecond(), first.as_millisecond() + 30_000), "the occurrence's window");

    let api = InProcessApi::start(NAMESPACE, &kafka_brokers()).await;
    let http = reqwest::Client::new();
    let url = api.apply_url(&id);
    let winners = |http: reqwest::Client, url: String| async move {
        let mut won = Vec::new();
        for user in 1..=4 {
            if apply(&http, &url, &format!("user-{user}")).await.0 == 201 {
                won.push(user);
            }
        }
        won
    };
    assert_eq!(winners(http.clone(), url.clone()).await, vec![1, 2]);
    let again = cli(&create, &database);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(keyspace::counters(&mut redis, &id).await.unwrap().unwrap().issued, 2, "a run within the occurrence keeps it");

    // Over, its coupons still on the topic (no consumer yet): refused, nothing changed.
    sleep_until(first + SignedDuration::from_secs(31)).await;
    let refused = cli(&create, &database);
    assert!(!refused.status.success(), "the occurrence before is not written");
    assert!(stderr(&refused).contains("not written to SQL yet"), "{}", stderr(&refused));
    assert_eq!(keyspace::counters(&mut redis, &id).await.unwrap().unwrap().incarnation, Some(format!("o{}", first.as_second())));

    let consumer = InProcessConsumer::start_with(ConsumerSettings {
        database_url: database.clone(),
        redis_url: redis_url(),
        kafka: kafka(&kafka_brokers()),
        topics: vec![topic.clone()],
        group_id: unique("group"),
        ..ConsumerSettings::default()
    });
    coupon_tests::wait_for_rows(&store, &first_key, 2, Duration::from_secs(30)).await;
    let second = first + SignedDuration::from_secs(60);
    sleep_until(second).await;
    let next = cli(&create, &database);
    assert!(next.status.success(), "{}", stderr(&next));
    let second_key = format!("{NAMESPACE}/{name}@o{}", second.as_second());
    assert_eq!(serde_json::from_slice::<Value>(&next.stdout).unwrap()["key"], second_key.as_str());
    assert_eq!(winners(http.clone(), url.clone()).await, vec![1, 2], "a sale of its own: the same users win again");
    coupon_tests::wait_for_rows(&store, &second_key, 2, Duration::from_secs(30)).await;
    for key in [&first_key, &second_key] {
        assert_eq!(coupon_tests::wait_for_stable_rows(&store, key, Duration::from_secs(3)).await, 2, "{key}");
    }
    consumer.stop().await.unwrap();
}

/// What a run refuses before anything is written.
#[test]
fn runs_it_cannot_honour_are_refused() {
    let database = "sqlite::memory:";
    for (extra, says) in [
        (vec!["--every", "0 10 * * *", "--limit", "2"], "--time-zone"),
        (vec!["--every", "0 10 * * *", "--time-zone", "UTC", "--limit", "2", "--count", "3"], "--from"),
        (vec!["--every", "0 10 * * *", "--time-zone", "UTC", "--limit", "2", "--start", "2030-01-01T00:00:00Z"], "cannot be used with"),
        (vec!["--every", "* * * * *", "--time-zone", "UTC", "--limit", "2", "--duration", "5m"], "overlap"),
    ] {
        let output = cli(&[&["event", "create", "refused"][..], &extra].concat(), database);
        assert!(!output.status.success(), "{extra:?} was accepted");
        assert!(stderr(&output).contains(says), "{extra:?}: {}", stderr(&output));
    }
}

/// `--follow` keeps running: it provisions each occurrence as the one before ends and is
/// written, prints each, and exits after the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_provisions_each_occurrence_until_the_last() {
    let (name, database) = (unique("follow"), coupon_tests::sqlite_url());
    let store = coupon_tests::migrated_store(&database).await;
    let topic = format!("cli.{name}");
    let id = EventId::new(NAMESPACE, &name).unwrap();
    let consumer = InProcessConsumer::start_with(ConsumerSettings {
        database_url: database.clone(),
        redis_url: redis_url(),
        kafka: kafka(&kafka_brokers()),
        topics: vec![topic.clone()],
        group_id: unique("group"),
        ..ConsumerSettings::default()
    });
    let first = minute_of(Timestamp::now()) + SignedDuration::from_secs(60);
    let from = first.to_string();
    let binary = Path::new(env!("CARGO_BIN_EXE_coupon-service-under-test"));
    let follow = tokio::process::Command::new(binary)
        .args(["event", "create", &name, "--every", "* * * * *", "--time-zone", "Asia/Seoul", "--duration", "20s", "--limit", "2"])
        .args(["--topic", &topic, "--partitions", "1", "--from", &from, "--count", "2", "--follow"])
        .env("REDIS_URL", redis_url())
        .env("KAFKA_BROKERS", kafka_brokers())
        .env("COUPON_NAMESPACE", NAMESPACE)
        .env("DATABASE_URL", &database)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let api = InProcessApi::start(NAMESPACE, &kafka_brokers()).await;
    let http = reqwest::Client::new();
    let url = api.apply_url(&id);
    for start in [first, first + SignedDuration::from_secs(60)] {
        sleep_until(start + SignedDuration::from_secs(1)).await;
        let mut won = Vec::new();
        for user in 1..=4 {
            if apply(&http, &url, &format!("user-{user}")).await.0 == 201 {
                won.push(user);
            }
        }
        assert_eq!(won, vec![1, 2], "the occurrence of {start}");
        coupon_tests::wait_for_rows(&store, &format!("{NAMESPACE}/{name}@o{}", start.as_second()), 2, Duration::from_secs(30)).await;
    }
    let output = tokio::time::timeout(Duration::from_secs(60), follow.wait_with_output()).await.expect("it exits after the last").unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let keys: Vec<&str> = lines.iter().filter_map(|l| l["key"].as_str()).collect();
    assert_eq!(keys, [format!("{NAMESPACE}/{name}@o{}", first.as_second()), format!("{NAMESPACE}/{name}@o{}", first.as_second() + 60)]);
    assert_eq!(lines.last().unwrap()["over"], true);
    consumer.stop().await.unwrap();
}

//! `coupon-service event create` as a shop runs it without Kubernetes, the real binary
//! against real Redis, Kafka and SQL: re-run on an existing event it keeps what it is not
//! given, and run for an event Redis lost it refuses to start it again from zero unless told
//! how (`--recover`, `--new-incarnation`).

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use coupon_core::event::EventId;
use coupon_core::redis::keyspace;
use coupon_service::app::ConsumerSettings;
use coupon_tests::{apply, kafka, kafka_brokers, redis_url, unique, wait_until, InProcessApi, InProcessConsumer};
use serde_json::Value;

const NAMESPACE: &str = "cli";

fn cli(args: &[&str], database_url: Option<&str>) -> Output {
    let binary = Path::new(env!("CARGO_BIN_EXE_coupon-service-under-test"));
    let mut command = std::process::Command::new(binary);
    command
        .args(args)
        .env("REDIS_URL", redis_url())
        .env("KAFKA_BROKERS", kafka_brokers())
        .env("COUPON_NAMESPACE", NAMESPACE)
        .env_remove("DATABASE_URL");
    if let Some(url) = database_url {
        command.env("DATABASE_URL", url);
    }
    command.output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn show(name: &str) -> Value {
    let shown = cli(&["event", "show", name], None);
    assert!(shown.status.success(), "{}", stderr(&shown));
    serde_json::from_slice(&shown.stdout).unwrap()
}

/// Re-run with only a new limit, the event keeps its topic and its window (it used to move
/// to the default topic and a window starting now); a different topic is refused and changes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_running_create_keeps_what_it_is_not_given_and_refuses_a_new_topic() {
    let (name, database) = (unique("keep"), coupon_tests::sqlite_url());
    let _store = coupon_tests::migrated_store(&database).await;
    let topic = format!("cli.{name}");
    let (start, end) = ("2030-11-27T10:00:00Z", "2030-11-27T10:30:00Z");
    let created = cli(
        &["event", "create", &name, "--limit", "10", "--topic", &topic, "--partitions", "1", "--start", start, "--end", end],
        Some(&database),
    );
    assert!(created.status.success(), "{}", stderr(&created));
    let id = EventId::new(NAMESPACE, &name).unwrap();
    let mut redis = coupon_tests::redis().await;
    let before = keyspace::counters(&mut redis, &id).await.unwrap().unwrap();

    let raised = cli(&["event", "create", &name, "--limit", "20"], Some(&database));
    assert!(raised.status.success(), "{}", stderr(&raised));
    let raised = keyspace::counters(&mut redis, &id).await.unwrap().unwrap();
    assert_eq!(raised.limit, 20);
    assert_eq!((&raised.topic, raised.start_ms, raised.end_ms), (&before.topic, before.start_ms, before.end_ms), "topic and window kept");
    let after = show(&name);

    let moved = cli(&["event", "create", &name, "--topic", "coupon_create"], Some(&database));
    assert!(!moved.status.success(), "a new topic for an existing event is refused");
    assert!(stderr(&moved).contains("topic cannot change"), "{}", stderr(&moved));
    assert_eq!(show(&name), after, "nothing changed");
}

/// Three coupons issued and written, then Redis loses the event. Running `event create`
/// again used to make a fresh event: its users got a second round of 201s. Now it needs SQL
/// to tell, refuses, and with `--recover` writes the event back recovering: the consumer
/// restores it from SQL, the three users keep their coupons and the limit is handed out once.
/// With `--new-incarnation` a new event starts, keyed apart from the old rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_redis_lost_is_recovered_or_started_anew_never_silently_reset() {
    let (name, database) = (unique("lost"), coupon_tests::sqlite_url());
    let store = coupon_tests::migrated_store(&database).await;
    let topic = format!("cli.{name}");
    let id = EventId::new(NAMESPACE, &name).unwrap();
    let now = jiff::Timestamp::now();
    let (start, end) = (now.to_string(), (now + jiff::SignedDuration::from_mins(30)).to_string());
    let create = [
        "event",
        "create",
        name.as_str(),
        "--limit",
        "5",
        "--topic",
        topic.as_str(),
        "--partitions",
        "1",
        "--start",
        &start,
        "--end",
        &end,
    ];
    let created = cli(&create, Some(&database));
    assert!(created.status.success(), "{}", stderr(&created));
    let consumer = InProcessConsumer::start_with(ConsumerSettings {
        database_url: database.clone(),
        redis_url: redis_url(),
        kafka: kafka(&kafka_brokers()),
        topics: vec![topic.clone()],
        group_id: unique("group"),
        recovery_settle: Duration::from_secs(2),
        ..ConsumerSettings::default()
    });
    let api = InProcessApi::start(NAMESPACE, &kafka_brokers()).await;
    let http = reqwest::Client::new();
    let url = api.apply_url(&id);
    for user in ["user-1", "user-2", "user-3"] {
        assert_eq!(apply(&http, &url, user).await.0, 201);
    }
    coupon_tests::wait_for_rows(&store, &id.to_string(), 3, Duration::from_secs(30)).await;

    // Redis loses the event.
    let mut redis = coupon_tests::redis().await;
    coupon_core::provision::delete_redis(&mut redis, &id).await.unwrap();
    let without_sql = cli(&create, None);
    assert!(!without_sql.status.success());
    assert!(stderr(&without_sql).contains("--database-url"), "{}", stderr(&without_sql));
    let elsewhere = coupon_tests::sqlite_url();
    let not_the_database = cli(&create, Some(&elsewhere));
    assert!(!not_the_database.status.success(), "a database without the coupons cannot say the event is new");
    assert!(stderr(&not_the_database).contains("consumer's database"), "{}", stderr(&not_the_database));
    let refused = cli(&create, Some(&database));
    assert!(!refused.status.success(), "an event with coupons in SQL is not created again from zero");
    assert!(stderr(&refused).contains("3 coupons in SQL"), "{}", stderr(&refused));
    assert!(keyspace::counters(&mut redis, &id).await.unwrap().is_none(), "nothing written");

    // Recovering needs the event's own topic and window (Redis lost them).
    let without_window = cli(&["event", "create", name.as_str(), "--limit", "5", "--topic", topic.as_str(), "--recover"], Some(&database));
    assert!(!without_window.status.success() && stderr(&without_window).contains("--start"), "{}", stderr(&without_window));
    let recovered = cli(&[&create[..], &["--recover"]].concat(), Some(&database));
    assert!(recovered.status.success(), "{}", stderr(&recovered));
    let (redis_ref, id_ref) = (&redis, &id);
    wait_until("restored from SQL", Duration::from_secs(30), || async move {
        let mut redis = redis_ref.clone();
        keyspace::counters(&mut redis, id_ref).await.unwrap().filter(|c| !c.recovering && c.issued == 3).map(|_| ())
    })
    .await;
    assert_eq!(apply(&http, &url, "user-1").await.0, 409, "a user who got a coupon keeps it, and only it");
    let mut slots = Vec::new();
    for n in 4..=9 {
        let (status, body) = apply(&http, &url, &format!("user-{n}")).await;
        if status == 201 {
            slots.push(body["slot"].as_i64().unwrap());
        }
    }
    assert_eq!(slots, vec![4, 5], "the limit handed out once");
    coupon_tests::wait_for_rows(&store, &id.to_string(), 5, Duration::from_secs(30)).await;

    // Lost again; this time a new event under the same name, keyed apart.
    coupon_core::provision::delete_redis(&mut redis, &id).await.unwrap();
    let anew = cli(&[&create[..], &["--new-incarnation"]].concat(), Some(&database));
    assert!(anew.status.success(), "{}", stderr(&anew));
    let key = serde_json::from_slice::<Value>(&anew.stdout).unwrap()["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with(&format!("{id}@")), "{key}");
    assert_eq!(apply(&http, &url, "user-1").await.0, 201, "a new event: its own coupons");
    coupon_tests::wait_for_rows(&store, &key, 1, Duration::from_secs(30)).await;
    assert_eq!(store.count_coupons(&id.to_string()).await.unwrap(), 5, "the old rows stay under their own key");
    consumer.stop().await.unwrap();
}

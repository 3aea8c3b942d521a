//! The apply path end to end: HTTP -> Redis gate -> Kafka (tansu) -> consumer -> SQL.

use std::time::Duration;

use coupon_service::tools::load::{self, LoadPlan};
use coupon_tests::*;

const NAMESPACE: &str = "shop";

async fn burst(base_url: &str, event: &str, requests: usize, same_user: bool, prefix: &str) -> load::LoadReport {
    let plan = LoadPlan {
        base_url: base_url.to_owned(),
        event: event.to_owned(),
        requests,
        concurrency: 200,
        same_user,
        users: None,
        user_prefix: prefix.to_owned(),
        ramp: Duration::ZERO,
        progress: false,
        identity: Default::default(),
        ca_file: None,
    };
    load::run(&plan).await.unwrap()
}

/// 1,000 distinct users against limit 100: exactly slots 1..=100 issued once each, 900 sold
/// out, and exactly 100 rows in the given database.
async fn thousand_users_limit_hundred(database_url: String) {
    let InProcessStack { event, store, api, consumer } = InProcessStack::start(&database_url, NAMESPACE, 100, 3).await;

    let report = burst(&api.base_url, event.id.name(), 1000, false, "user-").await;
    assert_eq!(report.count(201), 100, "{}", report.table());
    assert_eq!(report.count(410), 900, "{}", report.table());
    assert_eq!(report.slots(), (1..=100).collect::<Vec<i64>>());

    wait_for_rows(&store, &event.key(), 100, Duration::from_secs(30)).await;
    let rows = store.coupons(&event.key()).await.unwrap();
    assert_eq!(rows.iter().map(|(_, slot)| *slot).collect::<Vec<_>>(), (1..=100).collect::<Vec<i64>>());
    let mut users: Vec<&String> = rows.iter().map(|(user, _)| user).collect();
    users.sort();
    users.dedup();
    assert_eq!(users.len(), 100);
    assert!(store.failed_events(&event.topic).await.unwrap().is_empty());

    let snapshot = redis_snapshot(&event.id).await;
    assert_eq!(snapshot.count, Some(100), "the counter never passes the limit");
    assert_eq!(snapshot.users.len(), 100);
    consumer.stop().await.unwrap();
}

/// `Bob`, `bob` and `BOB` are three users: three coupons and three rows, none failed (a
/// case-insensitive collation would merge them into one row and fail the others).
async fn users_differing_only_by_case_are_distinct(database_url: String) {
    let InProcessStack { event, store, api, consumer } = InProcessStack::start(&database_url, NAMESPACE, 10, 1).await;
    let client = reqwest::Client::new();
    let mut slots = Vec::new();
    for user in ["Bob", "bob", "BOB"] {
        let response = client.post(api.apply_url(&event.id)).json(&serde_json::json!({ "userId": user })).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 201, "{user}");
        slots.push(response.json::<serde_json::Value>().await.unwrap()["slot"].as_i64().unwrap());
    }
    slots.sort();
    assert_eq!(slots, [1, 2, 3]);
    wait_for_rows(&store, &event.key(), 3, Duration::from_secs(30)).await;
    let mut rows = store.coupons(&event.key()).await.unwrap();
    rows.sort();
    let users: Vec<&str> = rows.iter().map(|(user, _)| user.as_str()).collect();
    assert_eq!(users, ["BOB", "Bob", "bob"]);
    assert!(store.failed_events(&event.topic).await.unwrap().is_empty());
    consumer.stop().await.unwrap();
}

on_every_dialect!(users_differing_only_by_case_are_distinct_on, users_differing_only_by_case_are_distinct);

on_every_dialect!(thousand_distinct_users_get_exactly_the_limit_on, thousand_users_limit_hundred);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_user_applying_a_thousand_times_gets_one_coupon() {
    let database_url = sqlite_url();
    let InProcessStack { event, store, api, consumer } = InProcessStack::start(&database_url, NAMESPACE, 100, 3).await;

    let report = burst(&api.base_url, event.id.name(), 1000, true, "solo-").await;
    assert_eq!(report.count(201), 1, "{}", report.table());
    assert_eq!(report.count(409), 999, "{}", report.table());
    wait_for_rows(&store, &event.key(), 1, Duration::from_secs(30)).await;
    assert_eq!(store.coupons(&event.key()).await.unwrap(), vec![("solo-0".to_owned(), 1)]);
    let snapshot = redis_snapshot(&event.id).await;
    assert_eq!(snapshot.count, Some(1));
    consumer.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_api_processes_share_one_limit() {
    let brokers = kafka_brokers();
    let database_url = postgres_url();
    let event = provision_event(&brokers, NAMESPACE, 100, 3).await;
    let store = migrated_store(&database_url).await;
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_coupon-service-under-test"));
    let ports = [free_port(), free_port()];
    let redis_url = redis_url();
    let apis: Vec<ChildProcess> = ports
        .iter()
        .map(|port| {
            let listen = format!("127.0.0.1:{port}");
            ChildProcess::spawn(
                binary,
                &["api"],
                &[
                    ("LISTEN_ADDR", &listen),
                    ("COUPON_NAMESPACE", NAMESPACE),
                    ("REDIS_URL", &redis_url),
                    ("KAFKA_BROKERS", &brokers),
                    ("AUTH_MODE", "open"),
                    ("OPS_ADDR", "127.0.0.1:0"),
                ],
            )
        })
        .collect();
    for port in ports {
        let url = format!("http://127.0.0.1:{port}/readyz");
        wait_for_status("api process ready", &url, 200, Duration::from_secs(30)).await;
    }
    let consumer = InProcessConsumer::start(&database_url, &[&event.topic], &brokers);

    let first = format!("http://127.0.0.1:{}", ports[0]);
    let second = format!("http://127.0.0.1:{}", ports[1]);
    let (a, b) = tokio::join!(burst(&first, event.id.name(), 1000, false, "a-"), burst(&second, event.id.name(), 1000, false, "b-"));
    assert_eq!(a.count(201) + b.count(201), 100, "{}\n{}", a.table(), b.table());
    assert_eq!(a.count(410) + b.count(410), 1900);
    let mut slots: Vec<i64> = a.slots().into_iter().chain(b.slots()).collect();
    slots.sort();
    assert_eq!(slots, (1..=100).collect::<Vec<i64>>());
    wait_for_rows(&store, &event.key(), 100, Duration::from_secs(30)).await;
    consumer.stop().await.unwrap();
    drop(apis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn load_tool_verify_fails_when_rows_differ_from_the_limit() {
    let database_url = sqlite_url();
    let InProcessStack { event, store, api, consumer } = InProcessStack::start(&database_url, NAMESPACE, 20, 1).await;
    let binary = env!("CARGO_BIN_EXE_coupon-tools-under-test");
    let run = |expect: &'static str| {
        let args = [
            "load",
            "--url",
            &api.base_url,
            "--event",
            event.id.name(),
            "--requests",
            "200",
            "--concurrency",
            "20",
            "--namespace",
            NAMESPACE,
        ];
        let mut command = std::process::Command::new(binary);
        command.args(args).args(["--verify", &database_url, "--expect-rows", expect]);
        command
    };
    let first = tokio::task::spawn_blocking({
        let mut command = run("20");
        move || command.output().unwrap()
    });
    let output = first.await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(stdout.contains("| 201 issued (201) | 20 |"), "{stdout}");
    // The rows may still be on their way: verify again once they are all written.
    wait_for_rows(&store, &event.key(), 20, Duration::from_secs(30)).await;
    let mut matching = run("20");
    let ok = tokio::task::spawn_blocking(move || matching.output().unwrap()).await.unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stdout));
    let mut wrong = run("21");
    let bad = tokio::task::spawn_blocking(move || wrong.output().unwrap()).await.unwrap();
    assert!(!bad.status.success(), "verify must fail when rows differ from the limit");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("verify failed: 20 rows, expected 21"));
    consumer.stop().await.unwrap();
}

/// A consumer following its namespace's events writes the coupons of an event on a topic it
/// was not configured with, created while it runs, within seconds and without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_consumer_follows_the_topic_of_a_new_event() {
    let brokers = kafka_brokers();
    let namespace = unique("follow");
    let first = provision_event(&brokers, &namespace, 10, 1).await;
    let database_url = sqlite_url();
    let store = migrated_store(&database_url).await;
    let consumer = InProcessConsumer::start_with(coupon_service::app::ConsumerSettings {
        database_url: database_url.clone(),
        redis_url: redis_url(),
        kafka: kafka(&brokers),
        topics: vec![first.topic.clone()],
        event_namespace: Some(namespace.clone()),
        group_id: unique("follow"),
        batch_linger: Duration::from_millis(10),
        ..Default::default()
    });
    let api = InProcessApi::start(&namespace, &brokers).await;
    // An event on a new topic, provisioned while the consumer runs.
    let second = provision_event(&brokers, &namespace, 10, 1).await;
    assert_ne!(second.topic, first.topic);
    let report = burst(&api.base_url, second.id.name(), 5, false, "late-").await;
    assert_eq!(report.count(201), 5, "{}", report.table());
    let started = std::time::Instant::now();
    wait_for_rows(&store, &second.key(), 5, Duration::from_secs(30)).await;
    eprintln!("new topic followed: rows written {:.1} s after the applies", started.elapsed().as_secs_f64());
    consumer.stop().await.unwrap();
}

/// Two shops (two releases: namespaces, api, consumer groups and databases of their own) on
/// one broker and one topic: each database gets exactly its own rows, and neither consumer
/// fails the other's records, not even a malformed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_tenants_on_one_topic_each_write_exactly_their_own_rows() {
    let brokers = kafka_brokers();
    let topic = unique("shared");
    let admin = kafka(&brokers).admin().unwrap();
    admin.ensure_topic(&topic, 2, 1).await.unwrap();
    let mut conn = redis().await;
    let mut tenants = Vec::new();
    // Namespaces of this run only: consumers with EVENT_NAMESPACE follow the topics their
    // namespace's events list in the shared Redis, and an earlier run's may be gone.
    for namespace in [unique("tenant-a"), unique("tenant-b")] {
        let namespace = namespace.as_str();
        let id = coupon_core::event::EventId::new(namespace, &unique("sale")).unwrap();
        let config = coupon_core::event::EventConfig::open_now(10, &topic, Duration::from_secs(600));
        coupon_core::provision::provision_redis(&mut conn, &id, &config, false).await.unwrap();
        let database = sqlite_url();
        let store = migrated_store(&database).await;
        let consumer = InProcessConsumer::start_with(coupon_service::app::ConsumerSettings {
            database_url: database,
            redis_url: redis_url(),
            kafka: kafka(&brokers),
            topics: vec![topic.clone()],
            event_namespace: Some(namespace.to_owned()),
            group_id: unique(namespace),
            ..coupon_service::app::ConsumerSettings::default()
        });
        let api = InProcessApi::start(namespace, &brokers).await;
        tenants.push((id, store, consumer, api));
    }
    // A malformed record of tenant b's (slot 0): b's consumer files it, a's passes over it.
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let bad =
        serde_json::json!({"event": tenants[1].0.to_string(), "userId": "x", "slot": 0, "issuedAt": "2026-11-27T10:00:00Z"}).to_string();
    producer
        .send(rdkafka::producer::FutureRecord::to(&topic).key("x").payload(&bad), Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let http = reqwest::Client::new();
    for (id, _, _, api) in &tenants {
        let mut issued = 0;
        for user in 0..15 {
            let response = http.post(api.apply_url(id)).json(&serde_json::json!({ "userId": format!("u{user}") })).send().await.unwrap();
            issued += usize::from(response.status() == 201);
        }
        assert_eq!(issued, 10, "{id}");
    }
    for (index, (own, store, _, _)) in tenants.iter().enumerate() {
        wait_for_rows(store, &own.to_string(), 10, Duration::from_secs(30)).await;
        for (other, _, _, _) in tenants.iter().filter(|(other, ..)| other != own) {
            assert_eq!(store.count_coupons(&other.to_string()).await.unwrap(), 0, "{other}'s rows in {own}'s database");
        }
        let expected = usize::from(index == 1);
        if expected > 0 {
            wait_until("the malformed record filed by its tenant", Duration::from_secs(20), || async {
                (store.failed_events(&topic).await.unwrap().len() >= expected).then_some(())
            })
            .await;
        }
        let failed = store.failed_events(&topic).await.unwrap();
        assert_eq!(failed.len(), expected, "only the malformed record's own tenant files it: {failed:?}");
    }
    for (_, _, consumer, _) in tenants {
        consumer.stop().await.unwrap();
    }
}

/// Topics the operator creates get the configured settings (`TOPIC_CONFIG`) and, with
/// replication -1, the broker's default replication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_created_with_the_configured_settings_and_the_brokers_replication() {
    let configs = coupon_core::kafka::parse_topic_configs("retention.ms=3600000").unwrap();
    let admin = kafka(&kafka_brokers()).admin().unwrap().with_topic_configs(configs);
    let topic = unique("configured");
    assert_eq!(admin.ensure_topic(&topic, 2, -1).await.unwrap(), coupon_core::kafka::TopicOutcome::Created);
    assert_eq!(admin.partitions(&topic, Duration::from_secs(10)).unwrap(), Some(2));
    assert_eq!(admin.topic_config(&topic, "retention.ms").await.unwrap().as_deref(), Some("3600000"));
}

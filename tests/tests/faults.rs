//! Failures on the apply path: broker down, consumer crash, bad records, bad input,
//! dependencies missing at start-up.

use std::path::Path;
use std::time::Duration;

use coupon_core::redis::keyspace;
use coupon_tests::tcp_gate::TcpGate;
use coupon_tests::*;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::json;

const NAMESPACE: &str = "shop";

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_coupon-service-under-test"))
}

async fn apply(client: &reqwest::Client, url: &str, body: String) -> (u16, serde_json::Value) {
    let response = client.post(url).header("content-type", "application/json").body(body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

async fn apply_user(client: &reqwest::Client, url: &str, user: &str) -> (u16, serde_json::Value) {
    apply(client, url, json!({ "userId": user }).to_string()).await
}

fn raw_producer(brokers: &str) -> FutureProducer {
    ClientConfig::new().set("bootstrap.servers", brokers).set("enable.idempotence", "true").set("acks", "all").create().unwrap()
}

async fn produce(producer: &FutureProducer, topic: &str, key: &str, payload: &str) {
    producer.send(FutureRecord::to(topic).key(key).payload(payload), Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
}

/// 3,000 distinct users spread over 3 s, 50 in flight; `outage` starts 1 s in.
async fn ramped_burst_with_outage(
    base_url: &str,
    event: &str,
    prefix: &str,
    outage: impl std::future::Future<Output = ()>,
) -> coupon_service::tools::load::LoadReport {
    let plan = coupon_service::tools::load::LoadPlan {
        base_url: base_url.to_owned(),
        event: event.to_owned(),
        requests: 3000,
        concurrency: 50,
        same_user: false,
        users: None,
        user_prefix: prefix.to_owned(),
        ramp: Duration::from_secs(3),
        progress: false,
        identity: Default::default(),
        ca_file: None,
    };
    let burst = tokio::spawn(async move { coupon_service::tools::load::run(&plan).await.unwrap() });
    tokio::time::sleep(Duration::from_secs(1)).await;
    outage.await;
    // Bounded: a service that never recovers fails the test in minutes rather than holding
    // the suite (each request may otherwise wait its full timeout).
    match tokio::time::timeout(Duration::from_secs(180), burst).await {
        Ok(report) => report.unwrap(),
        Err(_) => panic!("the burst did not finish within 180 s of the outage: the restarted service never recovered"),
    }
}

fn record(event: &str, user: &str, slot: i64) -> String {
    json!({"event": event, "userId": user, "slot": slot, "issuedAt": "2026-11-27T10:00:00Z"}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_down_answers_503_releases_the_slot_and_recovers() {
    let mut tansu = OwnTansu::start(free_port()).await;
    let brokers = tansu.brokers();
    let event = provision_event(&brokers, NAMESPACE, 5, 1).await;
    let client = reqwest::Client::new();

    // An api whose health is set by hand, so that a produce to a dead broker is attempted
    // and the release path runs.
    let api = InProcessApi::start_without_probes(NAMESPACE, &brokers, Duration::from_secs(1)).await;
    api.state.health.set("redis", true);
    api.state.health.set("kafka", true);
    let url = api.apply_url(&event.id);
    // The first produce may time out while the idempotent producer registers; a 503 releases
    // the slot, so the user gets slot 1 once the producer is warm.
    let first = wait_until("first coupon while the broker is up", Duration::from_secs(30), || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let answer = apply_user(&client, &url, "u1").await;
            (answer.0 != 503).then_some(answer)
        }
    })
    .await;
    assert_eq!(first, (201, json!({"status": "issued", "slot": 1})));

    tansu.stop().await;
    let (a, b) = tokio::join!(apply_user(&client, &url, "u2"), apply_user(&client, &url, "u3"));
    assert_eq!(a, (503, json!({"status": "unavailable"})));
    assert_eq!(b, (503, json!({"status": "unavailable"})));
    let snapshot = redis_snapshot(&event.id).await;
    assert_eq!(snapshot.users, vec!["u1".to_owned()], "user marks released");
    let mut free = snapshot.free.clone();
    free.sort();
    assert_eq!(free, vec![2, 3], "slots released to the free list");
    assert_eq!(snapshot.count.unwrap() - snapshot.free.len() as i64, 1, "issued unchanged");

    // A real api process notices the outage through its readiness probe and counts nothing.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let redis_url = redis_url();
    let _process = ChildProcess::spawn(
        binary(),
        &["api"],
        &[
            ("LISTEN_ADDR", &listen),
            ("COUPON_NAMESPACE", NAMESPACE),
            ("REDIS_URL", &redis_url),
            ("KAFKA_BROKERS", &brokers),
            ("AUTH_MODE", "open"),
            ("OPS_ADDR", "127.0.0.1:0"),
        ],
    );
    // Started while the broker is down: not ready (it never reached Kafka), and says so.
    let base = format!("http://{listen}");
    assert_eq!(wait_for_component(&base, "kafka", false, Duration::from_secs(30)).await, 503);
    let process_url = format!("http://{listen}/v1/events/{}/apply", event.id.name());
    assert_eq!(apply_user(&client, &process_url, "u4").await.0, 503);
    assert_eq!(redis_snapshot(&event.id).await, snapshot, "nothing counted while the broker is down");

    // Broker back (fresh in-memory storage, so the topic is created again).
    tansu.restart().await;
    kafka(&brokers).admin().unwrap().ensure_topic(&event.topic, 1, 1).await.unwrap();
    wait_for_component(&base, "kafka", true, Duration::from_secs(60)).await;
    wait_for_status("api ready once it reached the broker", &format!("{base}/readyz"), 200, Duration::from_secs(10)).await;
    let mut slots = Vec::new();
    for user in ["u2", "u3"] {
        let answer = wait_until("the same user gets a coupon once the broker is back", Duration::from_secs(60), || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let answer = apply_user(&client, &url, user).await;
                (answer.0 != 503).then_some(answer)
            }
        })
        .await;
        assert_eq!(answer.0, 201, "{answer:?}");
        slots.push(answer.1["slot"].as_i64().unwrap());
    }
    slots.sort();
    assert_eq!(slots, vec![2, 3], "released slots are reused first");
    let after = redis_snapshot(&event.id).await;
    assert_eq!(after.count, Some(3));
    assert!(after.free.is_empty());

    let database_url = sqlite_url();
    let store = migrated_store(&database_url).await;
    let consumer = InProcessConsumer::start(&database_url, &[&event.topic], &brokers);
    wait_for_rows(&store, &event.key(), 2, Duration::from_secs(30)).await;
    let mut rows = store.coupons(&event.key()).await.unwrap();
    rows.sort();
    let mut users: Vec<&str> = rows.iter().map(|(u, _)| u.as_str()).collect();
    users.sort();
    assert_eq!(users, ["u2", "u3"]);
    let mut slots: Vec<i64> = rows.iter().map(|(_, s)| *s).collect();
    slots.sort();
    assert_eq!(slots, [2, 3]);
    consumer.stop().await.unwrap();
    tansu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumer_killed_after_sql_commit_before_offset_commit_loses_and_duplicates_nothing() {
    let brokers = kafka_brokers();
    let event = provision_event(&brokers, NAMESPACE, 50, 1).await;
    let users: Vec<String> = (1..=50).map(|slot| format!("u{slot}")).collect();
    assert_eq!(issue(&event, &users.iter().map(String::as_str).collect::<Vec<_>>()).await, (1..=50).collect::<Vec<i64>>());
    let producer = raw_producer(&brokers);
    for slot in 1..=50 {
        produce(&producer, &event.topic, &format!("u{slot}"), &record(&event.key(), &format!("u{slot}"), slot)).await;
    }
    let database_url = postgres_url();
    let store = migrated_store(&database_url).await;
    let group = unique("crash-group");
    let redis_url = redis_url();
    let env = |listen: &str| {
        vec![
            ("LISTEN_ADDR".to_owned(), listen.to_owned()),
            ("DATABASE_URL".to_owned(), database_url.clone()),
            ("COUPON_TOPICS".to_owned(), event.topic.clone()),
            ("CONSUMER_GROUP".to_owned(), group.clone()),
            ("REDIS_URL".to_owned(), redis_url.clone()),
            ("KAFKA_BROKERS".to_owned(), brokers.clone()),
            ("BATCH_SIZE".to_owned(), "20".to_owned()),
        ]
    };
    let spawn = |extra: Vec<(String, String)>| {
        let listen = format!("127.0.0.1:{}", free_port());
        let mut vars = env(&listen);
        vars.extend(extra);
        let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        ChildProcess::spawn(binary(), &["consumer"], &pairs)
    };

    let mut crashing = spawn(vec![("FAILPOINTS".to_owned(), "consumer-after-sql-commit=return".to_owned())]);
    let status =
        tokio::time::timeout(Duration::from_secs(60), crashing.child.wait()).await.expect("consumer crashes at the fault point").unwrap();
    assert!(!status.success(), "aborted, not a clean exit");
    assert!(crashing.log_text().contains("consumer-after-sql-commit"), "{}", crashing.log_text());
    let written_before_crash = store.count_coupons(&event.key()).await.unwrap();
    assert!(written_before_crash > 0, "the first batch reached SQL before the crash");

    let mut restarted = spawn(vec![]);
    wait_for_rows(&store, &event.key(), 50, Duration::from_secs(60)).await;
    let rows = store.coupons(&event.key()).await.unwrap();
    assert_eq!(rows.iter().map(|(_, s)| *s).collect::<Vec<_>>(), (1..=50).collect::<Vec<i64>>());
    assert!(rows.iter().all(|(user, slot)| user == &format!("u{slot}")));
    assert!(store.failed_events(&event.topic).await.unwrap().is_empty(), "redelivered records are recognised, not failed");
    assert!(restarted.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_record_lands_in_failed_events_and_later_records_are_written() {
    let brokers = kafka_brokers();
    let event = provision_event(&brokers, NAMESPACE, 10, 1).await;
    assert_eq!(issue(&event, &["u1", "u2", "u4"]).await, vec![1, 2, 3]);
    let producer = raw_producer(&brokers);
    produce(&producer, &event.topic, "u1", &record(&event.key(), "u1", 1)).await;
    produce(&producer, &event.topic, "junk", "{not json").await;
    produce(&producer, &event.topic, "u2", &record(&event.key(), "u2", 2)).await;
    produce(&producer, &event.topic, "u3", &record(&event.key(), "u3", 11)).await;
    produce(&producer, &event.topic, "u4", &record(&event.key(), "u4", 3)).await;

    let database_url = sqlite_url();
    let store = migrated_store(&database_url).await;
    let consumer = InProcessConsumer::start(&database_url, &[&event.topic], &brokers);
    wait_for_rows(&store, &event.key(), 3, Duration::from_secs(30)).await;
    let failed = wait_until("two failed records", Duration::from_secs(30), || {
        let store = store.clone();
        let topic = event.topic.clone();
        async move {
            let failed = store.failed_events(&topic).await.unwrap();
            (failed.len() == 2).then_some(failed)
        }
    })
    .await;
    assert_eq!(failed[0].offset, 1);
    assert_eq!(failed[0].payload, b"{not json");
    assert!(failed[0].reason.contains("not a coupon record"), "{}", failed[0].reason);
    assert_eq!(failed[1].offset, 3);
    assert!(failed[1].reason.contains("slot 11 was not issued"), "{}", failed[1].reason);
    let rows = store.coupons(&event.key()).await.unwrap();
    assert_eq!(rows, vec![("u1".to_owned(), 1), ("u2".to_owned(), 2), ("u4".to_owned(), 3)]);
    consumer.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_http_input_gets_a_documented_4xx_and_changes_no_redis_key() {
    let brokers = kafka_brokers();
    let event = provision_event(&brokers, NAMESPACE, 10, 1).await;
    let api = InProcessApi::start(NAMESPACE, &brokers).await;
    let client = reqwest::Client::new();
    let url = api.apply_url(&event.id);
    let before = redis_snapshot(&event.id).await;

    let cases: Vec<(&str, String, u16)> = vec![
        ("invalid JSON", "{".into(), 400),
        ("missing userId", "{}".into(), 400),
        ("userId of the wrong type", r#"{"userId": 5}"#.into(), 400),
        ("empty userId", r#"{"userId": ""}"#.into(), 400),
        ("129-character userId", json!({"userId": "x".repeat(129)}).to_string(), 400),
        ("userId with a space", r#"{"userId": "a b"}"#.into(), 400),
        ("body over the limit", json!({"userId": "x", "pad": "y".repeat(4096)}).to_string(), 413),
    ];
    for (what, body, expected) in cases {
        let (status, answer) = apply(&client, &url, body).await;
        assert_eq!(status, expected, "{what}: {answer}");
        assert_eq!(answer["status"], "bad_request", "{what}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{what}: {answer}");
    }
    let unknown = unique("nope");
    let (status, answer) = apply_user(&client, &format!("{}/v1/events/{unknown}/apply", api.base_url), "u1").await;
    assert_eq!((status, answer), (404, json!({"status": "unknown_event"})));
    let (status, answer) = apply_user(&client, &format!("{}/v1/events/Bad_Name/apply", api.base_url), "u1").await;
    assert_eq!(status, 400, "{answer}");

    assert_eq!(redis_snapshot(&event.id).await, before);
    let unknown_id = coupon_core::event::EventId::new(NAMESPACE, &unknown).unwrap();
    let exists = keyspace::existing_keys(&mut redis().await, &unknown_id).await.unwrap();
    assert_eq!(exists, 0, "no key created for an unknown event");

    // And a valid request still works afterwards.
    assert_eq!(apply_user(&client, &url, "u1").await, (201, json!({"status": "issued", "slot": 1})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn binaries_start_without_redis_kafka_or_sql_and_recover_when_they_appear() {
    let mut redis_gate = TcpGate::closed("127.0.0.1:6379".parse().unwrap());
    let mut kafka_gate = TcpGate::closed(kafka_brokers().parse().unwrap());
    let mut sql_gate = TcpGate::closed("127.0.0.1:5432".parse().unwrap());
    let redis_url = format!("redis://{}", redis_gate.addr());
    let brokers = kafka_gate.addr().to_string();
    let database_url = format!("postgres://postgres@{}/test", sql_gate.addr());
    let api_listen = format!("127.0.0.1:{}", free_port());
    let consumer_listen = format!("127.0.0.1:{}", free_port());
    let mut api = ChildProcess::spawn(
        binary(),
        &["api"],
        &[
            ("LISTEN_ADDR", &api_listen),
            ("REDIS_URL", &redis_url),
            ("KAFKA_BROKERS", &brokers),
            ("AUTH_MODE", "open"),
            ("OPS_ADDR", "127.0.0.1:0"),
        ],
    );
    let mut consumer = ChildProcess::spawn(
        binary(),
        &["consumer"],
        &[
            ("LISTEN_ADDR", &consumer_listen),
            ("REDIS_URL", &redis_url),
            ("KAFKA_BROKERS", &brokers),
            ("DATABASE_URL", &database_url),
            ("COUPON_TOPICS", "coupon_create"),
        ],
    );

    for listen in [&api_listen, &consumer_listen] {
        let healthz = format!("http://{listen}/healthz");
        wait_for_status("process alive", &healthz, 200, Duration::from_secs(30)).await;
    }
    // Neither is ready before it has reached its dependencies once (a rollout with a wrong
    // address stops at its first pod); the api says what it cannot reach.
    let (status, body) = readyz(&format!("http://{api_listen}")).await;
    assert_eq!((status, &body["components"]["redis"]), (503, &serde_json::json!(false)), "{body}");
    assert_eq!(http_status(&format!("http://{consumer_listen}/readyz")).await, 503, "consumer not ready without its dependencies");
    wait_until("api logs what it cannot reach", Duration::from_secs(30), || {
        let log = api.log_text();
        async move { log.contains("cannot reach Redis").then_some(()) }
    })
    .await;
    wait_until("consumer logs what it cannot reach", Duration::from_secs(30), || {
        let log = consumer.log_text();
        async move { (log.contains("cannot reach SQL") && log.contains("cannot reach Redis")).then_some(()) }
    })
    .await;
    assert!(api.is_running() && consumer.is_running(), "no panic, no exit");
    assert!(!api.log_text().contains("panicked") && !consumer.log_text().contains("panicked"));

    redis_gate.open().await;
    kafka_gate.open().await;
    sql_gate.open().await;
    for listen in [&api_listen, &consumer_listen] {
        let readyz = format!("http://{listen}/readyz");
        wait_for_status("ready once the dependencies appear", &readyz, 200, Duration::from_secs(60)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_issues_and_persists_exactly_the_limit_with_the_embedded_defaults() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_coupon-tools-under-test"))
        .args(["demo", "--users", "1000"])
        .env_remove("KAFKA_BROKERS")
        .env_remove("DATABASE_URL")
        .env("REDIS_URL", redis_url())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("in-process mock cluster"), "{stdout}");
    assert!(stdout.contains("PASS: 100 issued, 100 persisted, 900 rejected"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sql_unreachable_for_ten_seconds_commits_nothing_then_loses_and_duplicates_nothing() {
    let brokers = kafka_brokers();
    let event = provision_event(&brokers, NAMESPACE, 60, 1).await;
    let mut gate = TcpGate::closed("127.0.0.1:5432".parse().unwrap());
    gate.open().await;
    let database_url = format!("postgres://postgres@{}/test", gate.addr());
    let store = migrated_store(&postgres_url()).await;

    let consumer = InProcessConsumer::start_with(coupon_service::app::ConsumerSettings {
        database_url,
        redis_url: redis_url(),
        kafka: kafka(&brokers),
        topics: vec![event.topic.clone()],
        group_id: unique("sql-outage"),
        batch_size: 10,
        batch_linger: Duration::from_millis(10),
        ..Default::default()
    });
    let (health, metrics) = (consumer.process().health.clone(), consumer.process().metrics.clone());
    let users: Vec<String> = (1..=60).map(|slot| format!("u{slot}")).collect();
    assert_eq!(issue(&event, &users.iter().map(String::as_str).collect::<Vec<_>>()).await, (1..=60).collect::<Vec<i64>>());
    let producer = raw_producer(&brokers);
    for slot in 1..=20 {
        produce(&producer, &event.topic, &format!("u{slot}"), &record(&event.key(), &format!("u{slot}"), slot)).await;
    }
    wait_for_rows(&store, &event.key(), 20, Duration::from_secs(30)).await;

    // SQL goes away for 10 s while 40 more records arrive.
    gate.close();
    for slot in 21..=60 {
        produce(&producer, &event.topic, &format!("u{slot}"), &record(&event.key(), &format!("u{slot}"), slot)).await;
    }
    let outage = std::time::Instant::now();
    wait_until("consumer reports SQL down", Duration::from_secs(10), || {
        let ready = health.is_ready("sql");
        async move { (!ready).then_some(()) }
    })
    .await;
    // Counted once the outage is seen, so a batch committed just before the cut is not
    // mistaken for one committed during it.
    let batches_before = metrics.batches.get();
    while outage.elapsed() < Duration::from_secs(10) {
        assert_eq!(metrics.batches.get(), batches_before, "no offsets committed while SQL is down");
        assert_eq!(store.count_coupons(&event.key()).await.unwrap(), 20);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    gate.open().await;
    wait_for_rows(&store, &event.key(), 60, Duration::from_secs(60)).await;
    let rows = store.coupons(&event.key()).await.unwrap();
    assert_eq!(rows.iter().map(|(_, s)| *s).collect::<Vec<_>>(), (1..=60).collect::<Vec<i64>>());
    assert!(store.failed_events(&event.topic).await.unwrap().is_empty());
    assert!(metrics.batches.get() > batches_before, "offsets committed after recovery");
    assert_eq!(metrics.commit_errors.get(), 0);
    consumer.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_and_idle_clients_cannot_hold_the_server() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let brokers = kafka_brokers();
    let event = provision_event(&brokers, NAMESPACE, 50, 1).await;
    let api = InProcessApi::start(NAMESPACE, &brokers).await;
    let addr = api.base_url.trim_start_matches("http://").to_owned();

    // 300 connections: half idle, half stuck in the middle of their headers (slowloris).
    let mut stalled = Vec::new();
    for n in 0..300 {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        if n % 2 == 0 {
            stream.write_all(b"POST /v1/events/x/apply HTTP/1.1\r\nHost: a\r\nContent-Len").await.unwrap();
        }
        stalled.push(stream);
    }

    // Real users are still answered, promptly.
    let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().unwrap();
    let url = api.apply_url(&event.id);
    for user in 0..50 {
        let (status, _) = apply_user(&client, &url, &format!("u{user}")).await;
        assert_eq!(status, 201);
    }

    // And the server lets go of every stalled connection after its header timeout.
    let started = std::time::Instant::now();
    for mut stream in stalled {
        let mut buffer = [0u8; 256];
        let read = tokio::time::timeout(Duration::from_secs(15), stream.read(&mut buffer)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(n)) => {
                assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 408"), "{}", String::from_utf8_lossy(&buffer[..n]))
            }
            Err(_) => panic!("a stalled connection was kept open for more than 15 s"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_and_restarted_mid_burst_issues_no_more_than_the_limit_and_every_201_has_its_row() {
    let brokers = kafka_brokers();
    // A limit the burst does not exhaust before the kill, so coupons are being issued when
    // Redis dies and after it is back.
    const LIMIT: i64 = 2000;
    // fsync once a second, Redis's default: the kill may lose acknowledged writes, which
    // the gate's fencing must notice (the restart is a new server).
    let mut own = OwnRedis::start_with(Persistence::EverySecond).await;
    let TestEvent { id, topic, .. } = provision_event_on(&own.url(), &brokers, NAMESPACE, LIMIT, 1).await;
    let name = id.name().to_owned();
    let database_url = sqlite_url();
    let store = migrated_store(&database_url).await;
    let api = InProcessApi::start_with_redis(NAMESPACE, &brokers, Duration::from_secs(5), &own.url()).await;
    api.state.health.set("redis", true);
    api.state.health.set("kafka", true);
    let consumer = InProcessConsumer::start_with_redis(&database_url, &[&topic], &brokers, &own.url());

    // Redis is killed after 1 s and back 0.5 s later.
    let report = ramped_burst_with_outage(&api.base_url, &name, "r-", async {
        own.kill().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        own.restart().await;
    })
    .await;

    // The client's reconnects may absorb the outage or some applies answer 503; both are fine.
    let issued = report.count(201) as i64;
    assert_eq!(report.server_errors(), report.count(503), "no other failure: {}", report.table());
    assert!(issued <= LIMIT, "never more than the limit: {}", report.table());
    assert!(issued > 0, "{}", report.table());
    wait_for_rows(&store, &id.to_string(), issued, Duration::from_secs(60)).await;
    let rows: std::collections::BTreeSet<(String, i64)> = store.coupons(&id.to_string()).await.unwrap().into_iter().collect();
    for answered in &report.issued {
        assert!(rows.contains(answered), "201 {answered:?} has no row");
    }
    let slots = report.slots();
    let mut unique_slots = slots.clone();
    unique_slots.dedup();
    assert_eq!(slots, unique_slots, "no slot issued twice");
    eprintln!("redis restart mid-burst: {} issued, {} rows, {} x 503, {} x 410", issued, rows.len(), report.count(503), report.count(410));
    consumer.stop().await.unwrap();
    own.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_from_files_are_used_and_never_logged() {
    let secret = "s3cret-pw-never-logged";
    let dir = std::env::temp_dir().join(unique("secrets"));
    std::fs::create_dir_all(&dir).unwrap();
    let redis_file = dir.join("redis-url");
    let database_file = dir.join("database-url");
    // Nothing listens on these ports: the processes log what they cannot reach.
    std::fs::write(&redis_file, format!("redis://:{secret}@127.0.0.1:{}/0", free_port())).unwrap();
    std::fs::write(&database_file, format!("postgres://app:{secret}@127.0.0.1:{}/coupons", free_port())).unwrap();
    let redis_path = redis_file.display().to_string();
    let database_path = database_file.display().to_string();
    let brokers = format!("127.0.0.1:{}", free_port());
    let api_listen = format!("127.0.0.1:{}", free_port());
    let consumer_listen = format!("127.0.0.1:{}", free_port());
    let api = ChildProcess::spawn(
        binary(),
        &["api"],
        &[
            ("LISTEN_ADDR", &api_listen),
            ("REDIS_URL_FILE", &redis_path),
            ("KAFKA_BROKERS", &brokers),
            ("AUTH_MODE", "open"),
            ("OPS_ADDR", "127.0.0.1:0"),
        ],
    );
    let consumer = ChildProcess::spawn(
        binary(),
        &["consumer"],
        &[
            ("LISTEN_ADDR", &consumer_listen),
            ("REDIS_URL_FILE", &redis_path),
            ("DATABASE_URL_FILE", &database_path),
            ("KAFKA_BROKERS", &brokers),
        ],
    );
    wait_until("both log the unreachable dependencies (from the files)", Duration::from_secs(30), || {
        let (api_log, consumer_log) = (api.log_text(), consumer.log_text());
        async move { (api_log.contains("cannot reach Redis") && consumer_log.contains("cannot reach SQL")).then_some(()) }
    })
    .await;
    for (name, log) in [("api", api.log_text()), ("consumer", consumer.log_text())] {
        assert!(!log.contains(secret), "{name} logged a credential:\n{log}");
        assert!(log.contains(":***@127.0.0.1"), "{name} names the endpoint with the password hidden:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_state_lost_mid_event_is_restored_from_sql_before_issuing_again() {
    use coupon_core::provision::{provision_redis, RedisOutcome};
    let brokers = kafka_brokers();
    let own = OwnRedis::start().await;
    let name = unique("ev");
    let id = coupon_core::event::EventId::new(NAMESPACE, &name).unwrap();
    let topic = format!("coupons.{name}");
    let config = coupon_core::event::EventConfig::open_now(30, &topic, Duration::from_secs(600));
    let mut conn = coupon_core::redis::RedisHandle::connect_with_deadline(&own.url(), Duration::from_secs(10)).await.unwrap();
    kafka(&brokers).admin().unwrap().ensure_topic(&topic, 2, 1).await.unwrap();
    assert_eq!(provision_redis(&mut conn, &id, &config, false).await.unwrap(), RedisOutcome::Created);
    let database_url = sqlite_url();
    let store = migrated_store(&database_url).await;
    let api = InProcessApi::start_with_redis(NAMESPACE, &brokers, Duration::from_secs(5), &own.url()).await;
    api.state.health.set("redis", true);
    api.state.health.set("kafka", true);
    let consumer = InProcessConsumer::start_with(coupon_service::app::ConsumerSettings {
        database_url: database_url.clone(),
        redis_url: own.url(),
        kafka: kafka(&brokers),
        topics: vec![topic.clone()],
        group_id: unique("recovery"),
        batch_size: 100,
        batch_linger: Duration::from_millis(10),
        recovery_settle: Duration::from_secs(2),
        ..Default::default()
    });
    let client = reqwest::Client::new();
    let url = api.apply_url(&id);
    for user in 0..20 {
        assert_eq!(apply_user(&client, &url, &format!("u{user}")).await.0, 201);
    }
    wait_for_rows(&store, &id.to_string(), 20, Duration::from_secs(30)).await;

    // Redis loses everything.
    redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await.unwrap();
    assert_eq!(apply_user(&client, &url, "u20").await, (503, json!({"status": "unavailable"})), "a known event is not 'unknown'");
    // The operator writes the configuration back, knowing the event existed.
    assert_eq!(provision_redis(&mut conn, &id, &config, true).await.unwrap(), RedisOutcome::CreatedRecovering);
    assert_eq!(apply_user(&client, &url, "u21").await, (503, json!({"status": "unavailable"})), "closed while recovering");
    let lost_at = std::time::Instant::now();
    wait_until("state restored from SQL", Duration::from_secs(60), || {
        let mut conn = conn.clone();
        let id = id.clone();
        async move {
            let counters = keyspace::counters(&mut conn, &id).await.unwrap().unwrap();
            (!counters.recovering).then_some(())
        }
    })
    .await;
    eprintln!("redis state lost: restored {:.1} s after the configuration came back", lost_at.elapsed().as_secs_f64());
    let counters = keyspace::counters(&mut conn, &id).await.unwrap().unwrap();
    assert_eq!((counters.issued, counters.persisted), (20, 20));

    // Not issued again from zero: old users are duplicates, new ones get slots 21..=30.
    let u0_slot = store.coupons(&id.to_string()).await.unwrap().into_iter().find(|(user, _)| user == "u0").unwrap().1;
    assert_eq!(apply_user(&client, &url, "u0").await, (409, json!({"status": "duplicate", "slot": u0_slot})));
    let mut new_slots = Vec::new();
    for user in 100..120 {
        let (status, body) = apply_user(&client, &url, &format!("u{user}")).await;
        if status == 201 {
            new_slots.push(body["slot"].as_i64().unwrap());
        } else {
            assert_eq!(status, 410, "{body}");
        }
    }
    new_slots.sort();
    assert_eq!(new_slots, (21..=30).collect::<Vec<i64>>());
    wait_for_rows(&store, &id.to_string(), 30, Duration::from_secs(30)).await;
    let rows = store.coupons(&id.to_string()).await.unwrap();
    assert_eq!(rows.iter().map(|(_, s)| *s).collect::<Vec<_>>(), (1..=30).collect::<Vec<i64>>());
    let users: std::collections::BTreeSet<&String> = rows.iter().map(|(u, _)| u).collect();
    assert_eq!(users.len(), 30, "each user at most once");
    assert!(store.failed_events(&topic).await.unwrap().is_empty());
    consumer.stop().await.unwrap();
}

/// Ignored until the broker is fixed: tansu 0.6.0's SQLite storage panics after a restart on
/// the first produce of an idempotent producer that goes on with its producer id, and then
/// answers nothing (`broker_durability`, which shows it with the broker alone). Depending on
/// whether the api's producer produced again before re-initialising, this test passed or
/// saw no rows at all, or fewer rows than 201s. The in-memory broker's outage
/// (`broker_down_answers_503_releases_the_slot_and_recovers`) runs in CI.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "tansu 0.6.0's SQLite storage panics after a restart (see broker_durability)"]
async fn broker_killed_and_restarted_on_durable_storage_mid_burst_every_201_has_exactly_one_row() {
    const LIMIT: i64 = 2000;
    let mut tansu = OwnTansu::start_durable(free_port()).await;
    let brokers = tansu.brokers();
    let event = provision_event(&brokers, NAMESPACE, LIMIT, 2).await;
    let database_url = sqlite_url();
    let store = migrated_store(&database_url).await;
    let api = InProcessApi::start_without_probes(NAMESPACE, &brokers, Duration::from_secs(2)).await;
    api.state.health.set("redis", true);
    api.state.health.set("kafka", true);
    let consumer = InProcessConsumer::start(&database_url, &[&event.topic], &brokers);
    // Warm the producer up so that the burst measures the outage, not the first connection.
    let client = reqwest::Client::new();
    let url = api.apply_url(&event.id);
    wait_until("first coupon", Duration::from_secs(30), || {
        let (client, url) = (client.clone(), url.clone());
        async move { (apply_user(&client, &url, "warm").await.0 == 201).then_some(()) }
    })
    .await;
    // The consumer has joined its group and consumes before the outage, as a deployed one
    // would have: the test is about records produced around the outage, not a first join
    // against a broker that is being killed.
    wait_for_rows(&store, &event.key(), 1, Duration::from_secs(30)).await;

    // The broker is killed (SIGKILL) after 1 s and back 0.5 s later.
    let report = ramped_burst_with_outage(&api.base_url, event.id.name(), "k-", async {
        tansu.stop().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        tansu.restart().await;
    })
    .await;

    // Depending on how the kill falls, librdkafka's retries absorb the outage within the
    // produce timeout or some applies answer 503 (and release their slots); both are fine.
    let issued = report.count(201) as i64 + 1;
    assert_eq!(report.server_errors(), report.count(503), "no other failure: {}", report.table());
    assert!(issued <= LIMIT);
    // A produce that timed out after sending answers 503 but may be written: its row is the
    // user's coupon (their next apply answers 201 with it). So rows are the 201s plus at most
    // the undecided produces.
    let undecided = api.state.metrics.undecided_produces.get() as i64;
    wait_for_at_least_rows(&store, &event.key(), issued, Duration::from_secs(60)).await;
    let written = wait_for_stable_rows(&store, &event.key(), Duration::from_secs(30)).await;
    assert!((issued..=issued + undecided).contains(&written), "{written} rows for {issued} x 201 and {undecided} undecided");
    let rows: std::collections::HashMap<String, i64> = store.coupons(&event.key()).await.unwrap().into_iter().collect();
    for (user, slot) in &report.issued {
        assert_eq!(rows.get(user), Some(slot), "201 for {user} (slot {slot}) has exactly its row");
    }
    let failed = store.failed_events(&event.topic).await.unwrap();
    eprintln!(
        "broker restart mid-burst (durable): {issued} x 201, {} x 503, {} rows, {} failed records",
        report.count(503),
        rows.len(),
        failed.len()
    );
    consumer.stop().await.unwrap();
    tansu.stop().await;
}

/// The api stays ready (in the Service's endpoints) through a Redis outage and answers it
/// itself: 503 JSON, never a refused connection; `/readyz` reports Redis unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_readiness_stays_true_through_a_redis_outage_while_applies_answer_503_json() {
    let brokers = kafka_brokers();
    let mut own = OwnRedis::start().await;
    let event = provision_event_on(&own.url(), &brokers, NAMESPACE, 10, 1).await;
    let settings = coupon_service::app::ApiSettings {
        namespace: NAMESPACE.into(),
        redis_url: own.url(),
        kafka: kafka(&brokers),
        ..coupon_service::app::ApiSettings::default()
    };
    let api = InProcessApi::start_with(settings).await;
    wait_until("api fully up", Duration::from_secs(30), || {
        let ready = api.state.health.all_ready();
        async move { ready.then_some(()) }
    })
    .await;
    let client = reqwest::Client::new();
    assert_eq!(apply(&client, &api.apply_url(&event.id), r#"{"userId":"before"}"#.into()).await.0, 201);

    own.kill().await;
    wait_for_component(&api.base_url, "redis", false, Duration::from_secs(10)).await;
    let outage = std::time::Instant::now();
    let mut n = 0;
    while outage.elapsed() < Duration::from_secs(5) {
        n += 1;
        let (status, body) = readyz(&api.base_url).await;
        assert_eq!(status, 200, "unready during the outage: {body}");
        let (status, body) = apply(&client, &api.apply_url(&event.id), format!(r#"{{"userId":"during-{n}"}}"#)).await;
        assert_eq!((status, body["status"].as_str()), (503, Some("unavailable")), "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    own.restart().await;
    wait_for_component(&api.base_url, "redis", true, Duration::from_secs(30)).await;
    assert_eq!(readyz(&api.base_url).await.0, 200);
    // The restarted server is a new one to the fencing: the event waits for verification
    // (503) rather than trusting it; what matters here is that the outage issued nothing.
    let mut conn = coupon_core::redis::RedisHandle::connect_with_deadline(&own.url(), Duration::from_secs(5)).await.unwrap();
    let counters = keyspace::counters(&mut conn, &event.id).await.unwrap().unwrap();
    assert_eq!(counters.issued, 1, "the outage issued nothing");
}

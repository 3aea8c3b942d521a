//! Every connection over TLS, against real servers started with a throw-away CA: Redis
//! (`rediss://`, client certificate required), PostgreSQL (`sslmode=verify-full`, plain
//! connections refused) and Kafka (SASL_SSL with SCRAM: tansu requiring SCRAM, behind a TLS
//! front). Each path is shown to work end to end, and to refuse a server whose certificate
//! the configured CA did not sign.

use std::path::Path;
use std::time::Duration;

use coupon_core::event::{EventConfig, EventId};
use coupon_core::kafka::{ClientProperties, KafkaSettings};
use coupon_core::provision;
use coupon_core::redis::{ConnectError, RedisHandle, RedisTarget, RedisTls};
use coupon_operator::backend::Backend;
use coupon_service::app::{ApiSettings, ConsumerSettings};
use coupon_tests::tls::{TestCa, TlsFront, TlsPostgres, TlsRedis};
use coupon_tests::*;
use rdkafka::consumer::{BaseConsumer, Consumer};

fn mutual_tls(ca: &TestCa) -> RedisTls {
    RedisTls { ca_file: Some(ca.ca()), client_cert_file: Some(ca.file("client.crt")), client_key_file: Some(ca.file("client.key")) }
}

/// Provisions an event through `redis` and `kafka`, open now for ten minutes.
async fn provision(redis: RedisTarget, kafka: &KafkaSettings, namespace: &str, limit: i64) -> TestEvent {
    let name = unique("ev");
    let id = EventId::new(namespace, &name).unwrap();
    let topic = format!("coupons.{name}");
    let config = EventConfig::open_now(limit, &topic, Duration::from_secs(600));
    let mut conn = RedisHandle::connect_with_deadline(redis, Duration::from_secs(10)).await.expect("Redis reachable");
    provision::provision_event(&mut conn, &kafka.admin().unwrap(), &id, &config, 1, 1).await.expect("provision");
    TestEvent { id, topic, limit }
}

/// Applies as `users` distinct users; returns the statuses.
async fn apply_all(api: &InProcessApi, event: &TestEvent, users: usize) -> Vec<u16> {
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for i in 0..users {
        let response = client.post(api.apply_url(&event.id)).json(&serde_json::json!({"userId": format!("u{i}")})).send().await.unwrap();
        statuses.push(response.status().as_u16());
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_over_tls_serves_the_api_the_consumer_and_the_operator_and_refuses_a_foreign_ca() {
    let ca = TestCa::new();
    let redis = TlsRedis::start(&ca).await;
    let target = RedisTarget::new(redis.url(), mutual_tls(&ca));
    let brokers = kafka_brokers();
    let namespace = unique("tls-redis");

    // The operator's backend provisions over TLS and reads the counters back.
    let event = provision(target.clone(), &kafka(&brokers), &namespace, 5).await;
    let backend = Backend::new(target.clone(), &kafka(&brokers), 1).unwrap();
    let counters = wait_until("the operator backend connected", Duration::from_secs(10), || {
        let (backend, id) = (&backend, event.id.clone());
        async move { backend.counters(&id).await.ok().flatten() }
    })
    .await;
    assert_eq!((counters.limit, counters.issued), (5, 0));

    let database_url = sqlite_url();
    let store = migrated_store(&database_url).await;
    let api = InProcessApi::start_ready(ApiSettings {
        namespace: namespace.clone(),
        redis_url: redis.url(),
        redis_tls: mutual_tls(&ca),
        kafka: kafka(&brokers),
        ..ApiSettings::default()
    })
    .await;
    let _consumer = InProcessConsumer::start_with(ConsumerSettings {
        database_url: database_url.clone(),
        redis_url: redis.url(),
        redis_tls: mutual_tls(&ca),
        kafka: kafka(&brokers),
        topics: vec![event.topic.clone()],
        group_id: unique("tls-redis"),
        ..ConsumerSettings::default()
    });
    let statuses = apply_all(&api, &event, 8).await;
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 410).count(), 3, "{statuses:?}");
    wait_for_rows(&store, &event.key(), 5, Duration::from_secs(30)).await;
    // The consumer marked them written, over its own TLS connection.
    wait_until("persisted counted in Redis", Duration::from_secs(20), || {
        let (backend, id) = (&backend, event.id.clone());
        async move { backend.counters(&id).await.ok().flatten().filter(|c| c.persisted == 5).map(|_| ()) }
    })
    .await;

    // A CA that did not sign the server's certificate: never connected, although the client
    // certificate is one the server accepts (so it is the client that refuses).
    let foreign = TestCa::new();
    let foreign_ca = || RedisTls { ca_file: Some(foreign.ca()), ..mutual_tls(&ca) };
    let refused = RedisHandle::connect_with_deadline(RedisTarget::new(redis.url(), foreign_ca()), Duration::from_secs(3)).await;
    assert!(matches!(refused, Err(ConnectError::Unreachable { .. })), "a server the CA did not sign was accepted");
    let foreign_backend = Backend::new(RedisTarget::new(redis.url(), foreign_ca()), &kafka(&brokers), 1).unwrap();
    let refused_api = InProcessApi::start_with_settings_unconnected(ApiSettings {
        namespace: namespace.clone(),
        redis_url: redis.url(),
        redis_tls: foreign_ca(),
        kafka: kafka(&brokers),
        ..ApiSettings::default()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(refused_api.state.redis.get().is_none(), "connected to a server the CA did not sign");
    assert!(foreign_backend.counters(&event.id).await.is_err(), "the operator's backend read from a server the CA did not sign");
    let answer =
        reqwest::Client::new().post(refused_api.apply_url(&event.id)).json(&serde_json::json!({"userId": "late"})).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 503);

    // Without the client certificate the server refuses us; in plain text nothing answers.
    let no_client_cert = RedisTls { ca_file: Some(ca.ca()), ..RedisTls::default() };
    let refused = RedisHandle::connect_with_deadline(RedisTarget::new(redis.url(), no_client_cert), Duration::from_secs(3)).await;
    assert!(refused.is_err(), "the server requires a client certificate");
    let plain = format!("redis://localhost:{}", redis.port);
    assert!(RedisHandle::connect_with_deadline(plain.as_str(), Duration::from_secs(3)).await.is_err());
    // TLS material with a plain URL is a configuration error, said at once.
    let mismatch = RedisHandle::connect_in_background(RedisTarget::new(plain, mutual_tls(&ca))).err().unwrap();
    assert!(mismatch.to_string().contains("is not rediss://"), "{mismatch}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_over_tls_with_verify_full_takes_the_consumers_rows_and_refuses_a_foreign_ca() {
    let ca = TestCa::new();
    let postgres = TlsPostgres::start(&ca).await;
    let database_url = postgres.url("verify-full", &ca.ca());
    let store = migrated_store(&database_url).await;

    let brokers = kafka_brokers();
    let namespace = unique("tls-pg");
    let event = provision_event(&brokers, &namespace, 4, 1).await;
    let api = InProcessApi::start(&namespace, &brokers).await;
    let _consumer = InProcessConsumer::start_with(ConsumerSettings {
        database_url: database_url.clone(),
        redis_url: redis_url(),
        kafka: kafka(&brokers),
        topics: vec![event.topic.clone()],
        group_id: unique("tls-pg"),
        ..ConsumerSettings::default()
    });
    let statuses = apply_all(&api, &event, 4).await;
    assert_eq!(statuses, [201; 4]);
    wait_for_rows(&store, &event.key(), 4, Duration::from_secs(30)).await;

    let foreign = TestCa::new();
    let Err(error) = coupon_service::sql::Store::connect(&postgres.url("verify-full", &foreign.ca())).await else {
        panic!("a server the CA did not sign was accepted");
    };
    assert!(error.to_string().to_lowercase().contains("certificate") || error.to_string().contains("tls"), "{error}");
    let plain = format!("postgres://postgres@localhost:{}/postgres?sslmode=disable", postgres.port);
    assert!(coupon_service::sql::Store::connect(&plain).await.is_err(), "the server takes TLS connections only");
}

/// Client properties of SASL_SSL with SCRAM, as `KAFKA_<PROPERTY>` variables would give them.
fn sasl_ssl(ca_file: &Path, mechanism: &str, user: &str, password: &str) -> ClientProperties {
    ClientProperties::default()
        .with("security.protocol", "SASL_SSL")
        .with("sasl.mechanism", mechanism)
        .with("sasl.username", user)
        .with("sasl.password", password)
        .with("ssl.ca.location", ca_file.to_str().unwrap())
}

/// Whether a client with `settings` gets the cluster's metadata within a few seconds.
async fn reaches(settings: &KafkaSettings) -> bool {
    let config = settings.client_config();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create().expect("client");
        consumer.fetch_metadata(None, Duration::from_secs(6)).is_ok()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_over_sasl_ssl_carries_the_whole_path_and_refuses_bad_credentials_or_a_foreign_ca() {
    let ca = TestCa::new();
    let (broker_port, tls_port) = (free_port(), free_port());
    let users = [("shop", "shop-secret", "scram512"), ("legacy", "legacy-secret", "scram256")];
    let _tansu = OwnTansu::start_authenticating(broker_port, &format!("tcp://localhost:{tls_port}"), &users).await;
    let _front = TlsFront::start(&ca, tls_port, broker_port).await;
    let bootstrap = format!("localhost:{tls_port}");
    let secure = KafkaSettings::new(&bootstrap).with_properties(sasl_ssl(&ca.ca(), "SCRAM-SHA-512", "shop", "shop-secret"));
    assert!(reaches(&secure).await, "SASL_SSL with SCRAM-SHA-512");

    // The whole path: topic created, records produced and consumed over SASL_SSL.
    let namespace = unique("tls-kafka");
    let event = provision(RedisTarget::from(redis_url()), &secure, &namespace, 6).await;
    let database_url = sqlite_url();
    let store = migrated_store(&database_url).await;
    let api = InProcessApi::start_ready(ApiSettings {
        namespace: namespace.clone(),
        redis_url: redis_url(),
        kafka: secure.clone(),
        ..ApiSettings::default()
    })
    .await;
    let _consumer = InProcessConsumer::start_with(ConsumerSettings {
        database_url: database_url.clone(),
        redis_url: redis_url(),
        kafka: secure.clone(),
        topics: vec![event.topic.clone()],
        group_id: unique("tls-kafka"),
        ..ConsumerSettings::default()
    });
    let statuses = apply_all(&api, &event, 6).await;
    assert_eq!(statuses, [201; 6]);
    wait_for_rows(&store, &event.key(), 6, Duration::from_secs(60)).await;

    let legacy = KafkaSettings::new(&bootstrap).with_properties(sasl_ssl(&ca.ca(), "SCRAM-SHA-256", "legacy", "legacy-secret"));
    assert!(reaches(&legacy).await, "SASL_SSL with SCRAM-SHA-256");
    let wrong_password = KafkaSettings::new(&bootstrap).with_properties(sasl_ssl(&ca.ca(), "SCRAM-SHA-512", "shop", "guess"));
    assert!(!reaches(&wrong_password).await, "a wrong password was accepted");
    let foreign = TestCa::new();
    let foreign_ca = KafkaSettings::new(&bootstrap).with_properties(sasl_ssl(&foreign.ca(), "SCRAM-SHA-512", "shop", "shop-secret"));
    assert!(!reaches(&foreign_ca).await, "a broker the CA did not sign was accepted");
    // The binary reads the same settings from its environment, a password from a file.
    let password = ca.dir.join("kafka-password");
    std::fs::write(&password, "shop-secret\n").unwrap();
    let binary = Path::new(env!("CARGO_BIN_EXE_coupon-service-under-test"));
    let topic = format!("coupons.{}", unique("env"));
    // Asked whether a new event had coupons (a new one has none).
    let database = coupon_tests::sqlite_url();
    coupon_tests::migrated_store(&database).await;
    let run = |password_file: &Path| {
        std::process::Command::new(binary)
            .args(["event", "create", &unique("env"), "--namespace", &namespace, "--limit", "1", "--topic", &topic, "--partitions", "1"])
            .env("REDIS_URL", redis_url())
            .env("DATABASE_URL", &database)
            .env("KAFKA_BROKERS", &bootstrap)
            .env("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
            .env("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
            .env("KAFKA_SASL_USERNAME", "shop")
            .env("KAFKA_SASL_PASSWORD_FILE", password_file)
            .env("KAFKA_SSL_CA_LOCATION", ca.ca())
            .output()
            .unwrap()
    };
    let created = run(&password);
    assert!(created.status.success(), "event create over SASL_SSL from the environment: {}", String::from_utf8_lossy(&created.stderr));
    std::fs::write(&password, "guess\n").unwrap();
    let refused = run(&password);
    assert!(!refused.status.success(), "a wrong password from the environment was accepted");
}

#[test]
fn every_documented_security_setting_reaches_librdkafka() {
    let properties = ClientProperties::from_variables(
        [
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_MECHANISM", "OAUTHBEARER"),
            ("KAFKA_SASL_OAUTHBEARER_CONFIG", "principal=shop"),
            ("KAFKA_ENABLE_SASL_OAUTHBEARER_UNSECURE_JWT", "true"),
            ("KAFKA_SSL_CA_LOCATION", "/etc/kafka/ca.crt"),
            ("KAFKA_SSL_CERTIFICATE_LOCATION", "/etc/kafka/client.crt"),
            ("KAFKA_SSL_KEY_LOCATION", "/etc/kafka/client.key"),
            ("KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM", "https"),
            ("KAFKA_CLIENT_ID", "coupon-api"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    )
    .unwrap();
    let native = KafkaSettings::new("b:9093").with_properties(properties.clone()).client_config().create_native_config().unwrap();
    for (property, value) in properties.iter() {
        assert_eq!(native.get(property).unwrap().to_lowercase(), value.to_lowercase(), "{property}");
    }
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let config = KafkaSettings::new("b:9093")
            .with_properties(ClientProperties::default().with("security.protocol", "SASL_SSL").with("sasl.mechanism", mechanism))
            .client_config();
        config.create_native_config().unwrap_or_else(|e| panic!("{mechanism}: {e}"));
    }
    // A name librdkafka does not know fails the client's creation, with its name.
    let typo = KafkaSettings::new("b:9093").with_properties(ClientProperties::default().with("security.protcol", "SSL")).client_config();
    let error = typo.create::<BaseConsumer>().err().unwrap().to_string();
    assert!(error.contains("security.protcol"), "{error}");
}

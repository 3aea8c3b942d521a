//! `coupon-tools demo`: the whole apply path on one machine, in one process.
//!
//! Needs only Redis. Storage is SQLite unless `DATABASE_URL` says otherwise; Kafka is
//! librdkafka's in-process mock cluster unless `KAFKA_BROKERS` names a broker.

use std::time::{Duration, Instant};

use clap::Args;
use coupon_core::event::{EventConfig, EventId};
use coupon_core::kafka::KafkaSettings;
use coupon_core::provision;
use coupon_core::redis::RedisHandle;
use coupon_core::secrets::redact_url;
use rdkafka::mocking::MockCluster;

use crate::app::{Api, ApiSettings, Consumer, ConsumerSettings};
use crate::sql::Store;

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Distinct users applying at once.
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,
    /// Coupons to hand out.
    #[arg(long, default_value_t = 100)]
    pub limit: i64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379", hide_env_values = true)]
    pub redis_url: String,
    /// Kafka brokers; when absent, an in-process mock cluster is used.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// SQL database; default a fresh SQLite file in the temp directory.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// How long to wait for the consumer to persist every issued coupon.
    #[arg(long, default_value = "60s", value_parser = coupon_core::time::parse_duration)]
    pub persist_timeout: Duration,
}

/// Runs the demo; exit code 0 only when exactly `limit` coupons were issued and persisted.
pub async fn run(args: DemoArgs) -> anyhow::Result<std::process::ExitCode> {
    // Leaked on purpose: the cluster must outlive every client of it, including probe tasks
    // that end only with the runtime, and the process exits right after the demo.
    let mock: Option<&'static MockCluster<'static, _>> = match &args.kafka_brokers {
        Some(_) => None,
        None => Some(Box::leak(Box::new(MockCluster::new(1)?))),
    };
    let brokers = match (&args.kafka_brokers, &mock) {
        (Some(brokers), _) => {
            println!("Kafka: {brokers}");
            brokers.clone()
        }
        (None, Some(mock)) => {
            println!("Kafka: no KAFKA_BROKERS set, using librdkafka's in-process mock cluster at {}", mock.bootstrap_servers());
            mock.bootstrap_servers()
        }
        (None, None) => unreachable!("a mock cluster is started when no broker is given"),
    };
    let database_url = match &args.database_url {
        Some(url) => url.clone(),
        None => {
            let path = std::env::temp_dir().join(format!("coupon-demo-{}.db", std::process::id()));
            let _ = std::fs::remove_file(&path);
            format!("sqlite://{}", path.display())
        }
    };
    println!("SQL: {}", redact_url(&database_url));
    println!("Redis: {}", redact_url(&args.redis_url));

    let event = EventId::new("demo", &format!("flash-sale-{}", jiff::Timestamp::now().as_millisecond()))?;
    let topic = format!("coupon_create.demo.{}", event.name());
    // A real broker may need the deployment's TLS/SASL properties; the mock needs none.
    let kafka = match &mock {
        None => KafkaSettings::new(brokers).with_env_properties()?,
        Some(_) => KafkaSettings::new(brokers),
    };
    let mut conn = RedisHandle::connect_with_deadline(&args.redis_url, Duration::from_secs(10))
        .await
        .map_err(|error| anyhow::anyhow!("{error}; start it with dev/stack up"))?;

    let config = EventConfig::open_now(args.limit, &topic, Duration::from_secs(600));
    match &mock {
        None => {
            provision::provision_event(&mut conn, &kafka.admin()?, &event, &config, 3, 1).await?;
        }
        Some(mock) => {
            // The mock cluster does not answer CreateTopics; it has its own call.
            mock.create_topic(&topic, 3, 1)?;
            provision::provision_redis(&mut conn, &event, &config, false).await?;
        }
    }
    println!("event {event}: limit {}, topic {topic}", args.limit);

    let store = Store::connect(&database_url).await?;
    store.migrate().await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let consumer = Consumer::start(
        ConsumerSettings {
            database_url: database_url.clone(),
            redis_url: args.redis_url.clone(),
            kafka: kafka.clone(),
            topics: vec![topic.clone()],
            group_id: format!("demo-{}", event.name()),
            ..ConsumerSettings::default()
        },
        None,
        stop_rx.clone(),
    )?;
    let api_settings =
        ApiSettings { namespace: event.namespace().to_owned(), redis_url: args.redis_url.clone(), kafka, ..ApiSettings::default() };
    let api = Api::start(api_settings, tokio::net::TcpListener::bind("127.0.0.1:0").await?, None, stop_rx)?;
    let base_url = api.base_url();
    let ready_by = Instant::now() + Duration::from_secs(30);
    // The consumer joins its group before the opening, as a deployed consumer would have.
    while !api.state.health.all_ready() || consumer.assigned.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        anyhow::ensure!(Instant::now() < ready_by, "api not ready after 30 s: {:?}", api.state.health.snapshot());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    println!("sending {} applies from distinct users, {} at a time ...", args.users, args.concurrency);
    let plan = super::load::LoadPlan {
        base_url,
        event: event.name().to_owned(),
        requests: args.users,
        concurrency: args.concurrency,
        same_user: false,
        users: None,
        user_prefix: "demo-user-".into(),
        ramp: Duration::ZERO,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        identity: Default::default(),
        ca_file: None,
    };
    let report = super::load::run(&plan).await?;
    let issued = report.count(201) as i64;

    let persist_started = Instant::now();
    let mut rows = store.count_coupons(&event.to_string()).await?;
    while rows < issued && persist_started.elapsed() < args.persist_timeout {
        tokio::time::sleep(Duration::from_millis(20)).await;
        rows = store.count_coupons(&event.to_string()).await?;
    }
    let persist_time = persist_started.elapsed();

    let _ = stop_tx.send(true);
    api.stopped().await;
    let consumer_result = consumer.stopped().await;
    provision::delete_redis(&mut conn, &event).await?;
    consumer_result?;

    println!("\n{}", report.table());
    println!("| persisted rows | {rows} |");
    println!("| persisted within | {:.3} s after the burst |", persist_time.as_secs_f64());
    let rejected = report.total() as i64 - issued;
    let ok = issued == args.limit && rows == args.limit && report.server_errors() == 0;
    println!("\n{}: {issued} issued, {rows} persisted, {rejected} rejected (limit {})", if ok { "PASS" } else { "FAIL" }, args.limit);
    Ok(if ok { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE })
}

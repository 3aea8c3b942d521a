//! `coupon-service demo`: the whole apply path on one machine, in one process.
//!
//! Needs only Redis. Storage is SQLite unless `DATABASE_URL` says otherwise; Kafka is
//! librdkafka's in-process mock cluster unless `KAFKA_BROKERS` names a broker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use clap::Args;
use rdkafka::mocking::MockCluster;

use crate::event_id::EventId;
use crate::health::Health;
use crate::kafka::KafkaSettings;
use crate::metrics::Metrics;
use crate::provision::{self, EventConfig};
use crate::redis_conn::RedisHandle;
use crate::store::Store;

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
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
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
    println!("SQL: {}", crate::redis_conn::redact_url(&database_url));
    println!("Redis: {}", crate::redis_conn::redact_url(&args.redis_url));

    let event = EventId::new("demo", &format!("flash-sale-{}", Utc::now().timestamp_millis()))?;
    let topic = format!("coupon_create.demo.{}", event.name());
    let kafka = KafkaSettings { bootstrap_servers: brokers, produce_timeout: Duration::from_secs(5) };
    let redis = RedisHandle::connect_in_background(&args.redis_url)?;
    let mut conn = tokio::time::timeout(Duration::from_secs(10), redis.wait()).await.map_err(|_| {
        anyhow::anyhow!("Redis at {} is not reachable; start it with dev/stack up", crate::redis_conn::redact_url(&args.redis_url))
    })?;

    let config = EventConfig::open_now(args.limit, &topic, Duration::from_secs(600));
    match &mock {
        None => {
            provision::provision_event(&mut conn, &kafka.admin()?, &event, &config, 3, 1).await?;
        }
        Some(mock) => {
            // The mock cluster does not answer CreateTopics; it has its own call.
            mock.create_topic(&topic, 3, 1)?;
            provision::provision_redis(&mut conn, &event, &config).await?;
        }
    }
    println!("event {event}: limit {}, topic {topic}", args.limit);

    let store = Store::connect(&database_url).await?;
    store.migrate().await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let health = Health::new(crate::consumer::COMPONENTS);
    let assigned = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let consumer = tokio::spawn(crate::consumer::run(
        crate::consumer::ConsumerSettings {
            topics: vec![topic.clone()],
            group_id: format!("demo-{}", event.name()),
            batch_size: 500,
            batch_linger: Duration::from_millis(20),
            recovery_settle: Duration::from_secs(10),
            assigned: assigned.clone(),
        },
        kafka.clone(),
        database_url.clone(),
        redis.clone(),
        health,
        Metrics::shared(),
        stop_rx.clone(),
    ));

    let api_state = Arc::new(crate::api::ApiState::new(
        "demo".into(),
        redis.clone(),
        kafka.clone(),
        Health::new(crate::api::COMPONENTS),
        Metrics::shared(),
    )?);
    crate::api::spawn_probes(&api_state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base_url = format!("http://{}", listener.local_addr()?);
    let app = crate::api::router(api_state.clone());
    let server = tokio::spawn(crate::server::serve(listener, app, crate::server::ServerLimits::default(), stop_rx));
    let ready_by = Instant::now() + Duration::from_secs(30);
    // The consumer joins its group before the opening, as a deployed consumer would have.
    while !api_state.health.all_ready() || assigned.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        anyhow::ensure!(Instant::now() < ready_by, "api not ready after 30 s: {:?}", api_state.health.snapshot());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    println!("sending {} applies from distinct users, {} at a time ...", args.users, args.concurrency);
    let plan = crate::load::LoadPlan {
        base_url,
        event: event.name().to_owned(),
        requests: args.users,
        concurrency: args.concurrency,
        same_user: false,
        user_prefix: "demo-user-".into(),
        ramp: Duration::ZERO,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let report = crate::load::run(&plan).await?;
    let issued = report.count(201) as i64;

    let persist_started = Instant::now();
    let mut rows = store.count_coupons(&event.to_string()).await?;
    while rows < issued && persist_started.elapsed() < args.persist_timeout {
        tokio::time::sleep(Duration::from_millis(20)).await;
        rows = store.count_coupons(&event.to_string()).await?;
    }
    let persist_time = persist_started.elapsed();

    let _ = stop_tx.send(true);
    let _ = server.await;
    let _ = consumer.await;
    provision::delete_redis(&mut conn, &event).await?;

    println!("\n{}", report.table());
    println!("| persisted rows | {rows} |");
    println!("| persisted within | {:.3} s after the burst |", persist_time.as_secs_f64());
    let rejected = report.total() as i64 - issued;
    let ok = issued == args.limit && rows == args.limit && report.server_errors() == 0;
    println!("\n{}: {issued} issued, {rows} persisted, {rejected} rejected (limit {})", if ok { "PASS" } else { "FAIL" }, args.limit);
    Ok(if ok { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE })
}

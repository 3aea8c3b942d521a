//! Command line of `coupon-service`: flags with environment-variable fallbacks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};

use crate::event_id::EventId;
use crate::health::Health;
use crate::kafka::KafkaSettings;
use crate::metrics::Metrics;
use crate::provision::{self, EventConfig};
use crate::redis_conn::RedisHandle;
use crate::telemetry::{self, LogFormat};

#[derive(Parser, Debug)]
#[command(
    name = "coupon-service",
    version,
    about = "First-come-first-served coupon events: apply api, Kafka-to-SQL consumer and local tooling"
)]
pub struct Cli {
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the HTTP apply api.
    Api(ApiArgs),
    /// Move coupon records from Kafka into SQL.
    Consumer(ConsumerArgs),
    /// Provision, inspect or remove an event without Kubernetes.
    #[command(subcommand)]
    Event(EventCommand),
    /// Send a flash crowd of applies to a running api.
    Load(LoadArgs),
    /// Run the whole path locally (Redis, Kafka or its in-process mock, SQLite) and show
    /// that exactly `limit` coupons are issued and persisted.
    Demo(crate::demo::DemoArgs),
}

#[derive(Args, Debug, Clone)]
pub struct RedisArgs {
    /// Redis URL; put a password in the environment, not on the command line.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379", hide_env_values = true)]
    pub redis_url: String,
}

#[derive(Args, Debug, Clone)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma separated.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// How long a produce may take before the apply answers 503 and the slot is released.
    #[arg(long, env = "PRODUCE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub produce_timeout: Duration,
}

impl KafkaArgs {
    pub fn settings(&self) -> KafkaSettings {
        KafkaSettings { bootstrap_servers: self.kafka_brokers.clone(), produce_timeout: self.produce_timeout }
    }
}

#[derive(Args, Debug)]
pub struct ApiArgs {
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Namespace of the events this api serves (the pod's namespace on Kubernetes).
    #[arg(long, env = "COUPON_NAMESPACE", default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

#[derive(Args, Debug)]
pub struct ConsumerArgs {
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,
    /// SQL database: postgres://, mysql://, mariadb:// or sqlite: URL.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://coupons.db", hide_env_values = true)]
    pub database_url: String,
    /// Topics to consume, comma separated.
    #[arg(long, env = "COUPON_TOPICS", default_value = "coupon_create", value_delimiter = ',')]
    pub topics: Vec<String>,
    #[arg(long, env = "CONSUMER_GROUP", default_value = "coupon-consumer")]
    pub group_id: String,
    /// Most records written in one SQL transaction.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 500)]
    pub batch_size: usize,
    /// How long a batch waits for more records once the first arrived.
    #[arg(long, env = "BATCH_LINGER", default_value = "20ms", value_parser = humantime::parse_duration)]
    pub batch_linger: Duration,
    /// How long an event whose Redis state was lost stays closed (503) before the consumer
    /// restores it from SQL; longer than the api's produce timeout.
    #[arg(long, env = "RECOVERY_SETTLE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub recovery_settle: Duration,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

#[derive(Subcommand, Debug)]
pub enum EventCommand {
    /// Create or update an event: Kafka topic first, then the Redis configuration. Counters
    /// of an existing event are kept.
    Create(EventCreateArgs),
    /// Print an event's configuration and counters as JSON.
    Show(EventRef),
    /// Remove an event's Redis keys (and with --delete-topic its topic).
    Delete(EventDeleteArgs),
}

#[derive(Args, Debug)]
pub struct EventRef {
    /// Event name.
    pub name: String,
    #[arg(long, env = "COUPON_NAMESPACE", default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub redis: RedisArgs,
}

#[derive(Args, Debug)]
pub struct EventCreateArgs {
    #[command(flatten)]
    pub event: EventRef,
    #[arg(long)]
    pub limit: i64,
    /// Coupons per user; only 1 is supported by the SQL schema today.
    #[arg(long, default_value_t = 1)]
    pub per_user: i64,
    /// Opening time, RFC 3339; default now.
    #[arg(long)]
    pub start: Option<DateTime<Utc>>,
    /// Closing time, RFC 3339; default start + --duration.
    #[arg(long)]
    pub end: Option<DateTime<Utc>>,
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    #[arg(long, default_value = "coupon_create")]
    pub topic: String,
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,
    #[arg(long, default_value_t = 1)]
    pub replication: i32,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

#[derive(Args, Debug)]
pub struct EventDeleteArgs {
    #[command(flatten)]
    pub event: EventRef,
    /// Also delete the Kafka topic.
    #[arg(long)]
    pub delete_topic: bool,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Base URL of the api.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Event name.
    #[arg(long)]
    pub event: String,
    #[arg(long, default_value_t = 10_000)]
    pub requests: usize,
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Send every request as the same user.
    #[arg(long)]
    pub same_user: bool,
    /// Spread the request starts over this long (e.g. 2s); default all at once.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub ramp: Duration,
    #[arg(long, default_value = "user-")]
    pub user_prefix: String,
    /// Count rows of the event in this database and fail unless they equal --expect-rows.
    #[arg(long, env = "VERIFY_DATABASE_URL", hide_env_values = true)]
    pub verify: Option<String>,
    /// Rows expected with --verify (the event's limit).
    #[arg(long)]
    pub expect_rows: Option<i64>,
    /// Namespace of the event, for --verify.
    #[arg(long, default_value = "default")]
    pub namespace: String,
}

/// Settings that may carry credentials. Each can also come from a file named by `<NAME>_FILE`
/// (a mounted Secret), so that it appears neither on the command line nor in the pod spec.
pub const SECRET_SETTINGS: &[&str] = &["REDIS_URL", "DATABASE_URL", "VERIFY_DATABASE_URL", "KAFKA_BROKERS"];

/// The value of `name`: the variable itself, else the trimmed content of the file named by
/// `<name>_FILE`. `Err` when that file cannot be read.
pub fn setting_from_env_or_file(name: &str, env: impl Fn(&str) -> Option<String>) -> Result<Option<String>, String> {
    if let Some(value) = env(name) {
        return Ok(Some(value));
    }
    match env(&format!("{name}_FILE")) {
        None => Ok(None),
        Some(path) => {
            std::fs::read_to_string(&path).map(|text| Some(text.trim().to_owned())).map_err(|e| format!("{name}_FILE={path}: {e}"))
        }
    }
}

/// Resolves every `<NAME>_FILE` of `SECRET_SETTINGS` into `<NAME>`. Call before any thread
/// starts (it sets environment variables).
pub fn load_secret_files() -> Result<(), String> {
    for name in SECRET_SETTINGS {
        if std::env::var_os(name).is_none() {
            if let Some(value) = setting_from_env_or_file(name, |n| std::env::var(n).ok())? {
                std::env::set_var(name, value);
            }
        }
    }
    Ok(())
}

/// Entry point shared by the `coupon-service` binary and the test harness's copy of it.
pub fn main() -> std::process::ExitCode {
    let _failpoints = fail::FailScenario::setup();
    if let Err(error) = load_secret_files() {
        eprintln!("error: {error}");
        return std::process::ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // Servers log their life; one-shot tools only what went wrong.
    let default_level = match cli.command {
        Command::Api(_) | Command::Consumer(_) => "info,sqlx=warn",
        Command::Demo(_) => "error,rdkafka=off,librdkafka=off",
        Command::Event(_) | Command::Load(_) => "warn",
    };
    telemetry::init_logging(cli.log_format, default_level);
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<std::process::ExitCode> {
    match command {
        Command::Api(args) => run_api(args).await?,
        Command::Consumer(args) => run_consumer(args).await?,
        Command::Event(command) => run_event(command).await?,
        Command::Load(args) => return run_load(args).await,
        Command::Demo(args) => return crate::demo::run(args).await,
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn run_api(args: ApiArgs) -> anyhow::Result<()> {
    EventId::new(&args.namespace, "x").map_err(|e| anyhow::anyhow!("--namespace: {e}"))?;
    let health = Health::new(crate::api::COMPONENTS);
    let redis = RedisHandle::connect_in_background(&args.redis.redis_url)?;
    let state = Arc::new(crate::api::ApiState::new(args.namespace, redis, args.kafka.settings(), health, Metrics::shared())?);
    crate::api::spawn_probes(&state);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "api listening");
    let shutdown = telemetry::shutdown_signal();
    crate::server::serve(listener, crate::api::router(state.clone()), crate::server::ServerLimits::default(), shutdown).await;
    tokio::task::spawn_blocking(move || crate::api::flush_producer(&state, Duration::from_secs(10))).await?;
    tracing::info!("api stopped");
    Ok(())
}

async fn run_consumer(args: ConsumerArgs) -> anyhow::Result<()> {
    let health = Health::new(crate::consumer::COMPONENTS);
    let metrics = Metrics::shared();
    let redis = RedisHandle::connect_in_background(&args.redis.redis_url)?;
    let shutdown = telemetry::shutdown_signal();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "consumer health endpoints listening");
    let ops = crate::ops::router(health.clone(), metrics.clone());
    let ops_shutdown = shutdown.clone();
    tokio::spawn(crate::server::serve(listener, ops, crate::server::ServerLimits::default(), ops_shutdown));
    let settings = crate::consumer::ConsumerSettings {
        topics: args.topics,
        group_id: args.group_id,
        batch_size: args.batch_size.max(1),
        batch_linger: args.batch_linger,
        recovery_settle: args.recovery_settle,
        assigned: Default::default(),
    };
    crate::consumer::run(settings, args.kafka.settings(), args.database_url, redis, health, metrics, shutdown).await
}

fn event_config(args: &EventCreateArgs) -> EventConfig {
    let start = args.start.unwrap_or_else(Utc::now);
    let end = args.end.unwrap_or_else(|| start + chrono::Duration::from_std(args.duration).unwrap_or(chrono::Duration::minutes(30)));
    EventConfig { limit: args.limit, per_user: args.per_user, start, end, topic: args.topic.clone() }
}

async fn run_event(command: EventCommand) -> anyhow::Result<()> {
    let deadline = Duration::from_secs(10);
    match command {
        EventCommand::Create(args) => {
            let id = EventId::new(&args.event.namespace, &args.event.name)?;
            let config = event_config(&args);
            config.validate()?;
            let mut conn = RedisHandle::connect_with_deadline(&args.event.redis.redis_url, deadline).await?;
            let admin = args.kafka.settings().admin()?;
            let (topic, redis) = provision::provision_event(&mut conn, &admin, &id, &config, args.partitions, args.replication).await?;
            println!("{}", serde_json::json!({"event": id.to_string(), "topic": format!("{topic:?}"), "redis": format!("{redis:?}")}));
        }
        EventCommand::Show(args) => {
            let id = EventId::new(&args.namespace, &args.name)?;
            let mut conn = RedisHandle::connect_with_deadline(&args.redis.redis_url, deadline).await?;
            match crate::gate::read_counters(&mut conn, &id).await? {
                Some(counters) => println!("{}", serde_json::to_string_pretty(&counters)?),
                None => anyhow::bail!("event {id} is not provisioned"),
            }
        }
        EventCommand::Delete(args) => {
            let id = EventId::new(&args.event.namespace, &args.event.name)?;
            let mut conn = RedisHandle::connect_with_deadline(&args.event.redis.redis_url, deadline).await?;
            let topic = crate::gate::read_counters(&mut conn, &id).await?.map(|c| c.topic);
            let removed = provision::delete_redis(&mut conn, &id).await?;
            if args.delete_topic {
                if let Some(topic) = topic.filter(|t| !t.is_empty()) {
                    args.kafka.settings().admin()?.delete_topic(&topic).await?;
                }
            }
            println!("{}", serde_json::json!({"event": id.to_string(), "keysRemoved": removed}));
        }
    }
    Ok(())
}

async fn run_load(args: LoadArgs) -> anyhow::Result<std::process::ExitCode> {
    let plan = crate::load::LoadPlan {
        base_url: args.url,
        event: args.event.clone(),
        requests: args.requests,
        concurrency: args.concurrency,
        same_user: args.same_user,
        user_prefix: args.user_prefix,
        ramp: args.ramp,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let report = crate::load::run(&plan).await?;
    println!("{}", report.table());
    if let Some(url) = args.verify {
        let expected = args.expect_rows.ok_or_else(|| anyhow::anyhow!("--verify needs --expect-rows"))?;
        let id = EventId::new(&args.namespace, &args.event)?;
        let store = crate::store::Store::connect(&url).await?;
        let rows = store.count_coupons(&id.to_string()).await?;
        println!("rows in SQL for {id}: {rows} (expected {expected})");
        if rows != expected {
            eprintln!("verify failed: {rows} rows, expected {expected}");
            return Ok(std::process::ExitCode::FAILURE);
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::setting_from_env_or_file;

    #[test]
    fn a_setting_comes_from_the_variable_or_from_its_file() {
        let dir = std::env::temp_dir().join(format!("coupon-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("redis-url");
        std::fs::write(&file, "redis://:pw@redis:6379\n").unwrap();
        let path = file.display().to_string();
        let env = |vars: Vec<(&'static str, String)>| move |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone());
        assert_eq!(
            setting_from_env_or_file("REDIS_URL", env(vec![("REDIS_URL_FILE", path.clone())])),
            Ok(Some("redis://:pw@redis:6379".into()))
        );
        assert_eq!(
            setting_from_env_or_file("REDIS_URL", env(vec![("REDIS_URL", "direct".into()), ("REDIS_URL_FILE", path)])),
            Ok(Some("direct".into()))
        );
        assert_eq!(setting_from_env_or_file("REDIS_URL", env(vec![])), Ok(None));
        assert!(setting_from_env_or_file("REDIS_URL", env(vec![("REDIS_URL_FILE", "/nonexistent/x".into())]))
            .unwrap_err()
            .contains("REDIS_URL_FILE"));
    }
}

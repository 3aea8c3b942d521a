use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::get;
use clap::{Parser, Subcommand};
use coupon_core::kafka::KafkaSettings;
use coupon_core::redis::{RedisTarget, RedisTls};
use coupon_core::telemetry::{self, LogFormat, OPENMETRICS_CONTENT_TYPE};
use coupon_operator::backend::Backend;
use coupon_operator::leader::LeaderElection;
use coupon_operator::metrics::Metrics;

#[derive(Parser)]
#[command(name = "coupon-operator", version, about = "Kubernetes operator for CouponEvent resources")]
struct Cli {
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinition as YAML.
    Crd,
    /// Run the controller.
    Run(Box<RunArgs>),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Redis URL (`rediss://` for TLS).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379", hide_env_values = true)]
    redis_url: String,
    /// PEM file of the CA that signed the Redis server's certificate (`rediss://`).
    #[arg(long, env = "REDIS_CA_FILE")]
    redis_ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate for a Redis that requires one.
    #[arg(long, env = "REDIS_CLIENT_CERT_FILE")]
    redis_client_cert_file: Option<std::path::PathBuf>,
    /// PEM key of the client certificate.
    #[arg(long, env = "REDIS_CLIENT_KEY_FILE")]
    redis_client_key_file: Option<std::path::PathBuf>,
    /// Kafka bootstrap servers; TLS and SASL from `KAFKA_<PROPERTY>` variables and
    /// `KAFKA_PROPERTIES_FILE`, as for the services.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    kafka_brokers: String,
    /// Replication factor of the topics the operator creates; -1: the broker's default.
    #[arg(long, env = "TOPIC_REPLICATION", default_value_t = -1, allow_negative_numbers = true)]
    replication: i32,
    /// Configuration of the topics the operator creates, `name=value` pairs separated by
    /// commas, by Kafka's names (`retention.ms=604800000,min.insync.replicas=2`).
    #[arg(long, env = "TOPIC_CONFIG", default_value = "")]
    topic_config: String,
    /// Manage the CouponEvents of this namespace only (empty: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE", default_value = "")]
    watch_namespace: String,
    /// With every namespace watched: act only on the CouponEvents of namespaces whose labels
    /// match this label selector (`coupons.fcfs.dev/tenant=true`); empty: every namespace.
    #[arg(long, env = "NAMESPACE_SELECTOR", default_value = "")]
    namespace_selector: String,
    /// At most this many partitions over the topics the operator creates, summed over the
    /// events it manages: an event whose new topic would pass it is refused
    /// (`PartitionCapExceeded`). 0: no cap.
    #[arg(long, env = "MAX_PARTITIONS_TOTAL", default_value_t = 0)]
    max_partitions_total: u32,
    /// Act only while holding a Lease, so that one instance of several writes. Turn off
    /// only where a single instance is guaranteed otherwise.
    #[arg(long, env = "LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the Lease (one per release).
    #[arg(long, env = "LEASE_NAME", default_value = "coupon-operator")]
    lease_name: String,
    /// Namespace of the Lease: the operator's own (the chart passes it).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This instance's name among the candidates (the chart passes the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long a Lease outlives its holder's last renewal: the longest wait for a
    /// hand-over after an instance died without releasing it.
    #[arg(long, env = "LEASE_DURATION", default_value = "30s", value_parser = coupon_core::time::parse_duration)]
    lease_duration: std::time::Duration,
    /// CouponEvents reconciled at once: at a shared opening time hundreds of events cross
    /// into their warm-up together, and each waits on the API server.
    #[arg(long, env = "RECONCILE_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    reconcile_concurrency: u16,
    /// How long before its Lease could expire a leader whose renewals fail stops acting:
    /// time kept in hand for clock rates and requests in flight.
    #[arg(long, env = "LEASE_RENEW_MARGIN", default_value = "10s", value_parser = coupon_core::time::parse_duration)]
    lease_renew_margin: std::time::Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    coupon_core::secrets::load_secret_files()?;
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => print!("{}", coupon_operator::crd_yaml()),
        Command::Run(args) => {
            let RunArgs {
                listen,
                redis_url,
                redis_ca_file,
                redis_client_cert_file,
                redis_client_key_file,
                kafka_brokers,
                replication,
                topic_config,
                watch_namespace,
                namespace_selector,
                max_partitions_total,
                leader_election,
                lease_name,
                lease_namespace,
                identity,
                lease_duration,
                lease_renew_margin,
                reconcile_concurrency,
            } = *args;
            if !watch_namespace.is_empty() && !namespace_selector.is_empty() {
                anyhow::bail!("WATCH_NAMESPACE and NAMESPACE_SELECTOR exclude each other: a selector picks among all namespaces");
            }
            if leader_election && lease_renew_margin >= lease_duration {
                anyhow::bail!("LEASE_RENEW_MARGIN ({lease_renew_margin:?}) must be below LEASE_DURATION ({lease_duration:?})");
            }
            telemetry::init_logging(cli.log_format, "info,kube=warn");
            let kafka = KafkaSettings::new(kafka_brokers).with_env_properties()?;
            let topic_configs = coupon_core::kafka::parse_topic_configs(&topic_config).map_err(anyhow::Error::msg)?;
            let redis = RedisTarget::new(
                redis_url,
                RedisTls { ca_file: redis_ca_file, client_cert_file: redis_client_cert_file, client_key_file: redis_client_key_file },
            );
            let backend = Backend::new(redis, &kafka, replication)?.with_topic_configs(topic_configs);
            let metrics = Arc::new(Metrics::default());
            let served = metrics.clone();
            let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let readiness = ready.clone();
            let app = axum::Router::new()
                .route("/healthz", get(|| async { "ok" }))
                // Ready once the CouponEvent cache has synced.
                .route(
                    "/readyz",
                    get(move || async move {
                        if readiness.load(std::sync::atomic::Ordering::Relaxed) {
                            (axum::http::StatusCode::OK, "ready")
                        } else {
                            (axum::http::StatusCode::SERVICE_UNAVAILABLE, "CouponEvent cache not synced")
                        }
                    }),
                )
                .route("/metrics", get(move || async move { ([("content-type", OPENMETRICS_CONTENT_TYPE)], served.encode()) }));
            let listener = tokio::net::TcpListener::bind(listen).await?;
            tokio::spawn(async move { axum::serve(listener, app).await });
            let client = kube::Client::try_default().await?;
            tracing::info!("coupon-operator started");
            let namespace = Some(watch_namespace).filter(|n| !n.is_empty());
            let namespace_selector = Some(namespace_selector).filter(|s| !s.is_empty());
            if let Some(selector) = &namespace_selector {
                coupon_operator::controller::namespaces::check_selector(client.clone(), selector).await.map_err(anyhow::Error::msg)?;
            }
            // Ready once CouponEvents can be listed (the CRD installed, RBAC in place), leading
            // or not: a standby that is Ready is what lets a disruption budget keep one.
            tokio::spawn(coupon_operator::readiness::wait_until_listable(client.clone(), namespace.clone(), ready.clone()));
            let backend = Arc::new(backend);
            let settings = coupon_operator::controller::Settings {
                namespace: namespace.clone(),
                namespace_selector,
                concurrency: reconcile_concurrency,
                max_partitions_total: (max_partitions_total > 0).then_some(i64::from(max_partitions_total)),
            };
            let controller =
                || coupon_operator::controller::run(client.clone(), backend.clone(), metrics.clone(), ready.clone(), settings.clone());
            if leader_election {
                // Unique among candidates: the pod name; else the host name and the start time
                // (process ids repeat across containers).
                let identity = identity.unwrap_or_else(|| {
                    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "coupon-operator".into());
                    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
                    format!("{host}-{started}")
                });
                let election = LeaderElection {
                    namespace: lease_namespace,
                    lease_name,
                    identity,
                    lease_duration,
                    renew_margin: lease_renew_margin,
                    leading: Default::default(),
                };
                election.run(client.clone(), controller, shutdown_signal()).await?;
            } else {
                controller().await;
            }
        }
    }
    Ok(())
}

/// SIGTERM or Ctrl-C: what ends a standby (a leader's controller ends on the same signals).
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use clap::{Parser, Subcommand};
use coupon_operator::backend::Backend;
use coupon_operator::metrics::Metrics;
use coupon_service::kafka::KafkaSettings;
use coupon_service::telemetry::{self, LogFormat};

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
    Run {
        /// Address of /healthz and /metrics.
        #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379", hide_env_values = true)]
        redis_url: String,
        #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
        kafka_brokers: String,
        /// Replication factor of the topics the operator creates.
        #[arg(long, env = "TOPIC_REPLICATION", default_value_t = 1)]
        replication: i32,
        /// Manage the CouponEvents of this namespace only (empty: all namespaces).
        #[arg(long, env = "WATCH_NAMESPACE", default_value = "")]
        watch_namespace: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    coupon_service::cli::load_secret_files().map_err(anyhow::Error::msg)?;
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => print!("{}", coupon_operator::crd_yaml()),
        Command::Run { listen, redis_url, kafka_brokers, replication, watch_namespace } => {
            telemetry::init_logging(cli.log_format, "info,kube=warn");
            let kafka = KafkaSettings { bootstrap_servers: kafka_brokers, produce_timeout: Duration::from_secs(5) };
            let backend = Backend::new(&redis_url, &kafka, replication)?;
            let metrics = Arc::new(Metrics::default());
            let served = metrics.clone();
            let app = axum::Router::new()
                .route("/healthz", get(|| async { "ok" }))
                .route("/metrics", get(move || async move { served.encode() }));
            let listener = tokio::net::TcpListener::bind(listen).await?;
            tokio::spawn(async move { axum::serve(listener, app).await });
            let client = kube::Client::try_default().await?;
            tracing::info!("coupon-operator started");
            let namespace = Some(watch_namespace).filter(|n| !n.is_empty());
            coupon_operator::controller::run(client, backend, metrics, namespace).await;
        }
    }
    Ok(())
}

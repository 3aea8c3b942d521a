//! Command line of `coupon-service`, the production binary: the api, the consumer and the
//! event commands, flags with environment-variable fallbacks. The load generator and the
//! demo are `coupon-tools` (`tools_cli`), which the image does not carry.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use coupon_core::kafka::KafkaSettings;
use coupon_core::redis::{RedisTarget, RedisTls};
use coupon_core::telemetry::{self, LogFormat};
use coupon_core::time::FriendlyDuration;

use crate::app::{Api, ApiSettings, Consumer, ConsumerSettings};
use crate::apply::ReplicaWait;
use crate::auth::{AuthSettings, JwksUrl, JwtKeys, JwtSettings};
use crate::http::ServerLimits;

#[derive(Parser, Debug)]
#[command(
    name = "coupon-service",
    version,
    about = "First-come-first-served coupon events: apply api, Kafka-to-SQL consumer and events without Kubernetes"
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
    Event(super::event::EventCommand),
    /// Print the api's OpenAPI document (the one its ops listener serves at /openapi.json),
    /// for client generators and gateways.
    Openapi,
}

#[derive(Args, Debug, Clone)]
pub struct RedisArgs {
    /// Redis URL (`rediss://` for TLS); put a password in the environment, not on the
    /// command line.
    #[arg(long, env = "REDIS_URL", default_value_t = ApiSettings::default().redis_url, hide_env_values = true)]
    pub redis_url: String,
    /// PEM file of the CA that signed the Redis server's certificate (`rediss://`); default
    /// the system's roots.
    #[arg(long, env = "REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,
    /// PEM client certificate, for a Redis that requires one (with --redis-client-key-file).
    #[arg(long, env = "REDIS_CLIENT_CERT_FILE")]
    pub redis_client_cert_file: Option<PathBuf>,
    /// PEM key of the client certificate.
    #[arg(long, env = "REDIS_CLIENT_KEY_FILE")]
    pub redis_client_key_file: Option<PathBuf>,
}

impl RedisArgs {
    pub fn tls(&self) -> RedisTls {
        RedisTls {
            ca_file: self.redis_ca_file.clone(),
            client_cert_file: self.redis_client_cert_file.clone(),
            client_key_file: self.redis_client_key_file.clone(),
        }
    }

    pub fn target(&self) -> RedisTarget {
        RedisTarget::new(&self.redis_url, self.tls())
    }
}

#[derive(Args, Debug, Clone)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma separated. TLS, SASL and other client properties come
    /// from `KAFKA_<PROPERTY>` variables (`KAFKA_SECURITY_PROTOCOL=SASL_SSL`, ...) and a
    /// properties file named by `KAFKA_PROPERTIES_FILE`.
    #[arg(long, env = "KAFKA_BROKERS", default_value_t = KafkaSettings::default().bootstrap_servers)]
    pub kafka_brokers: String,
}

impl KafkaArgs {
    pub fn settings(&self) -> anyhow::Result<KafkaSettings> {
        Ok(KafkaSettings::new(&self.kafka_brokers).with_env_properties()?)
    }
}

/// A secret given on the command line or in the environment; `Debug` shows `***`.
#[derive(Clone)]
pub struct Redacted(pub String);

impl std::str::FromStr for Redacted {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Self(value.to_owned()))
    }
}

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// `AUTH_MODE`: how the api learns who the user is.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// A bearer token signed by the shop's identity provider.
    Jwt,
    /// A header set by a trusted gateway.
    Header,
    /// The body's `userId`, unproven: local runs and demos only.
    Open,
}

#[derive(Args, Debug, Clone)]
pub struct AuthArgs {
    /// How the user is identified. No default: an api that trusts the body's `userId` must
    /// be asked for (`open`), never fallen into by a missing variable.
    #[arg(long, env = "AUTH_MODE", value_enum)]
    pub auth_mode: Option<AuthMode>,
    /// `header` mode: the header the gateway sets.
    #[arg(long, env = "AUTH_HEADER", default_value = "X-User-Id")]
    pub auth_header: String,
    /// `jwt` mode, HS256: the shared secret (at least 32 bytes; or JWT_SECRET_FILE).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Redacted>,
    /// `jwt` mode, RS*/PS*/ES*: a JWKS file of the identity provider's public keys, read
    /// again when it changes.
    #[arg(long, env = "JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<PathBuf>,
    /// `jwt` mode, RS*/PS*/ES*: the identity provider's JWKS URL (its `jwks_uri`, https
    /// only), fetched at start, after its max-age, and when a token names a new key.
    #[arg(long, env = "JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,
    /// PEM certificates to trust for `JWT_JWKS_URL` besides the system's roots (a private CA).
    #[arg(long, env = "JWT_JWKS_CA_FILE")]
    pub jwt_jwks_ca_file: Option<PathBuf>,
    /// Required `iss` claim.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// The claim holding the user id.
    #[arg(long, env = "JWT_USER_CLAIM", default_value = "sub")]
    pub jwt_user_claim: String,
    /// Clock skew allowed on `exp` and `nbf`.
    #[arg(long, env = "JWT_LEEWAY", default_value = "30s")]
    pub jwt_leeway: FriendlyDuration,
}

impl AuthArgs {
    pub fn settings(&self) -> anyhow::Result<AuthSettings> {
        let Some(mode) = self.auth_mode else {
            anyhow::bail!(
                "AUTH_MODE is required: jwt (a bearer token of the identity provider), header (a header a trusted gateway sets) \
                 or open (the body's userId, unproven: local runs only)"
            )
        };
        Ok(match mode {
            AuthMode::Open => AuthSettings::Open,
            AuthMode::Header => AuthSettings::Header {
                header: axum::http::HeaderName::try_from(self.auth_header.as_str())
                    .with_context(|| format!("AUTH_HEADER {:?} is not a header name", self.auth_header))?,
            },
            AuthMode::Jwt => {
                let url = self.jwt_jwks_url.as_deref().filter(|url| !url.is_empty());
                let keys = match (&self.jwt_secret, &self.jwt_jwks_file, url) {
                    (Some(secret), None, None) => JwtKeys::Secret(secret.0.as_bytes().to_vec()),
                    (None, Some(path), None) => JwtKeys::JwksFile(path.clone()),
                    (None, None, Some(url)) => {
                        let ca = match &self.jwt_jwks_ca_file {
                            Some(path) => Some(std::fs::read(path).with_context(|| format!("JWT_JWKS_CA_FILE {}", path.display()))?),
                            None => None,
                        };
                        JwtKeys::JwksUrl(JwksUrl::new(url, ca).map_err(anyhow::Error::msg)?)
                    }
                    _ => {
                        anyhow::bail!("AUTH_MODE=jwt needs exactly one of JWT_SECRET (or JWT_SECRET_FILE), JWT_JWKS_FILE and JWT_JWKS_URL")
                    }
                };
                anyhow::ensure!(
                    self.jwt_jwks_ca_file.is_none() || url.is_some(),
                    "JWT_JWKS_CA_FILE is only for JWT_JWKS_URL: the certificates a JWKS URL's server is checked against"
                );
                AuthSettings::Jwt(JwtSettings {
                    keys,
                    issuer: self.jwt_issuer.clone().filter(|s| !s.is_empty()),
                    audience: self.jwt_audience.clone().filter(|s| !s.is_empty()),
                    user_claim: self.jwt_user_claim.clone(),
                    leeway: self.jwt_leeway.into(),
                })
            }
        })
    }
}

#[derive(Args, Debug, Clone)]
pub struct RecordKeysArgs {
    /// File of the keys records are signed (api) and verified (consumer) with, one
    /// `<id>=<base64 key of at least 32 bytes>` per line, the first signing: a Secret shared
    /// by the api and the consumer. Unset: records are unsigned, and checked against Redis
    /// alone.
    #[arg(long, env = "RECORD_KEYS_FILE")]
    pub record_keys_file: Option<PathBuf>,
}

impl RecordKeysArgs {
    /// The keys, refused at start when the file is unreadable or malformed.
    pub fn keys(&self) -> anyhow::Result<Option<std::sync::Arc<coupon_core::event::RecordKeys>>> {
        let Some(path) = &self.record_keys_file else { return Ok(None) };
        let keys = coupon_core::event::RecordKeys::load(path).map_err(anyhow::Error::msg)?;
        Ok(Some(std::sync::Arc::new(keys)))
    }
}

#[derive(Args, Debug)]
pub struct ApiArgs {
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Address of `/metrics` and `/openapi.json` (and the probes): keep it out of any public
    /// Service.
    #[arg(long, env = "OPS_ADDR", default_value = "127.0.0.1:9090")]
    pub ops: SocketAddr,
    /// Namespace of the events this api serves (the pod's namespace on Kubernetes).
    #[arg(long, env = "COUPON_NAMESPACE", default_value_t = ApiSettings::default().namespace)]
    pub namespace: String,
    /// How long a produce may take before the apply answers 503.
    #[arg(long, env = "PRODUCE_TIMEOUT", default_value_t = ApiSettings::default().produce_timeout.into())]
    pub produce_timeout: FriendlyDuration,
    /// Redis replicas that must hold the gate's write (`WAIT`) before the record is
    /// produced; 0 turns it off.
    #[arg(long, env = "REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,
    /// How long to wait for those replicas before answering 503.
    #[arg(long, env = "REDIS_WAIT_TIMEOUT", default_value = "500ms")]
    pub redis_wait_timeout: FriendlyDuration,
    /// After SIGTERM, how long to keep serving with readiness off before no longer accepting
    /// connections (endpoints drain meanwhile); below the pod's termination grace period.
    #[arg(long, env = "SHUTDOWN_DELAY", default_value = "5s")]
    pub shutdown_delay: FriendlyDuration,
    /// Open connections at most: one more is answered 503 (`Retry-After: 1`) and closed.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = ServerLimits::default().max_connections as u32,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Requests being answered at most: one more is answered 503 (`Retry-After: 1`) at once.
    #[arg(long, env = "MAX_REQUESTS_IN_FLIGHT", default_value_t = ServerLimits::default().max_requests_in_flight as u32,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub max_requests_in_flight: u32,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub records: RecordKeysArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

impl ApiArgs {
    fn settings(&self) -> anyhow::Result<ApiSettings> {
        Ok(ApiSettings {
            namespace: self.namespace.clone(),
            redis_url: self.redis.redis_url.clone(),
            redis_tls: self.redis.tls(),
            auth: self.auth.settings()?,
            kafka: self.kafka.settings()?,
            produce_timeout: self.produce_timeout.into(),
            replica_wait: (self.redis_wait_replicas > 0)
                .then(|| ReplicaWait { replicas: self.redis_wait_replicas, timeout: self.redis_wait_timeout.into() }),
            shutdown_delay: self.shutdown_delay.into(),
            server: ServerLimits {
                max_connections: self.max_connections as usize,
                max_requests_in_flight: self.max_requests_in_flight as usize,
                ..ServerLimits::default()
            },
            record_keys: self.records.keys()?,
            ..ApiSettings::default()
        })
    }
}

#[derive(Args, Debug)]
pub struct ConsumerArgs {
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,
    /// SQL database: postgres://, mysql://, mariadb:// or sqlite: URL.
    #[arg(long, env = "DATABASE_URL", default_value_t = ConsumerSettings::default().database_url, hide_env_values = true)]
    pub database_url: String,
    /// Topics to consume, comma separated.
    #[arg(long, env = "COUPON_TOPICS", default_value = "coupon_create", value_delimiter = ',')]
    pub topics: Vec<String>,
    /// Serve this namespace's events only (the chart sets the release namespace): also
    /// consume the topics they declare, picked up within seconds of their provisioning, and
    /// pass over records of other namespaces' events (another release's consumer writes
    /// them). Unset: every event's records are written.
    #[arg(long, env = "EVENT_NAMESPACE")]
    pub event_namespace: Option<String>,
    #[arg(long, env = "CONSUMER_GROUP", default_value_t = ConsumerSettings::default().group_id)]
    pub group_id: String,
    /// Most records written in one SQL transaction.
    #[arg(long, env = "BATCH_SIZE", default_value_t = ConsumerSettings::default().batch_size)]
    pub batch_size: usize,
    /// How long a batch waits for more records once the first arrived.
    #[arg(long, env = "BATCH_LINGER", default_value_t = ConsumerSettings::default().batch_linger.into())]
    pub batch_linger: FriendlyDuration,
    /// How long an event whose Redis state may be lost stays closed (503) before the
    /// consumer restores it from SQL, and how long past a delivery's deadline an unwritten
    /// coupon waits before it is healed; longer than a broker may hold a produce request.
    #[arg(long, env = "RECOVERY_SETTLE", default_value_t = ConsumerSettings::default().recovery_settle.into())]
    pub recovery_settle: FriendlyDuration,
    /// How long records of an event with no configuration in Redis are held before they are
    /// failed as not provisioned.
    #[arg(long, env = "MISSING_EVENT_PATIENCE", default_value_t = ConsumerSettings::default().missing_event_patience.into())]
    pub missing_event_patience: FriendlyDuration,
    #[command(flatten)]
    pub records: RecordKeysArgs,
    /// While Redis cannot tell whether a gate issued a record (an event recovering after its
    /// Redis lost data), refuse one no valid signature vouches for. Turn on once every api
    /// signs (RECORD_KEYS_FILE) and the records produced before have been written; needs
    /// RECORD_KEYS_FILE.
    #[arg(long, env = "RECORD_SIGNATURES_REQUIRED", default_value_t = false, action = clap::ArgAction::Set)]
    pub record_signatures_required: bool,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

impl ConsumerArgs {
    fn signatures_required(&self) -> anyhow::Result<bool> {
        if self.record_signatures_required && self.records.record_keys_file.is_none() {
            anyhow::bail!("RECORD_SIGNATURES_REQUIRED needs RECORD_KEYS_FILE: without keys no signature can be verified");
        }
        Ok(self.record_signatures_required)
    }

    fn settings(&self) -> anyhow::Result<ConsumerSettings> {
        Ok(ConsumerSettings {
            database_url: self.database_url.clone(),
            redis_url: self.redis.redis_url.clone(),
            redis_tls: self.redis.tls(),
            kafka: self.kafka.settings()?,
            topics: self.topics.clone(),
            event_namespace: self.event_namespace.clone(),
            group_id: self.group_id.clone(),
            batch_size: self.batch_size.max(1),
            batch_linger: self.batch_linger.into(),
            recovery_settle: self.recovery_settle.into(),
            missing_event_patience: self.missing_event_patience.into(),
            record_keys: self.records.keys()?,
            signatures_required: self.signatures_required()?,
        })
    }
}

/// Entry point shared by the `coupon-service` binary and the test harness's copy of it.
pub fn main() -> std::process::ExitCode {
    let _failpoints = fail::FailScenario::setup();
    run_command_line(|cli: Cli| {
        // Servers log their life; one-shot tools only what went wrong.
        let default_level = match cli.command {
            Command::Api(_) | Command::Consumer(_) => "info,sqlx=warn",
            Command::Event(_) | Command::Openapi => "warn",
        };
        (cli.log_format, default_level, run(cli.command))
    })
}

/// What every binary of this crate does around its command: secret files read, the command
/// line parsed (`start` gives the log format and default level, and the command's future),
/// the runtime started, the command run, and a failure printed and turned into the exit code.
pub(crate) fn run_command_line<C, F>(start: impl FnOnce(C) -> (LogFormat, &'static str, F)) -> std::process::ExitCode
where
    C: Parser,
    F: std::future::Future<Output = anyhow::Result<std::process::ExitCode>>,
{
    if let Err(error) = coupon_core::secrets::load_secret_files() {
        eprintln!("error: {error}");
        return std::process::ExitCode::FAILURE;
    }
    let cli = C::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let (log_format, default_level, command) = start(cli);
    telemetry::init_logging(log_format, default_level);
    match runtime.block_on(command) {
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
        Command::Event(command) => super::event::run(command).await?,
        Command::Openapi => print!("{}", crate::http::openapi_document()),
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn run_api(args: ApiArgs) -> anyhow::Result<()> {
    // Configuration first: a malformed one is refused before anything listens.
    let settings = args.settings()?;
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    let ops = tokio::net::TcpListener::bind(args.ops).await.with_context(|| format!("cannot listen on {} (OPS_ADDR)", args.ops))?;
    let api = Api::start(settings, listener, Some(ops), telemetry::shutdown_signal())?;
    tracing::info!(listen = %api.local_addr, ops = ?api.ops_addr, "api listening");
    api.stopped().await;
    tracing::info!("api stopped");
    Ok(())
}

async fn run_consumer(args: ConsumerArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, "consumer health endpoints listening");
    let consumer = Consumer::start(args.settings()?, Some(listener), telemetry::shutdown_signal())?;
    consumer.stopped().await?;
    Ok(())
}

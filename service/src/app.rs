//! Builds each process once: the api and the consumer, each from one settings value with
//! `Default`. The binary, the demo, the test harness and the benchmark all start them here,
//! so a process under test is assembled exactly as in production.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use coupon_core::event::{EventId, EventIdError, RecordKeys};
use coupon_core::kafka::{KafkaError, KafkaSettings};
use coupon_core::redis::{ConnectError, RedisHandle, RedisTarget, RedisTls};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::apply::producer::ProducerSlot;
use crate::apply::{ApplyService, ReplicaWait, COMPONENTS as API_COMPONENTS};
use crate::auth::{AuthSettings, Authenticator};
use crate::consumer::{ConsumerError, COMPONENTS as CONSUMER_COMPONENTS};
use crate::health::Health;
use crate::http::{self, ApiState, ServerLimits};
use crate::metrics::Metrics;

/// Everything that configures an api process.
#[derive(Clone, Debug)]
pub struct ApiSettings {
    /// Namespace of the events this api serves (the pod's namespace on Kubernetes).
    pub namespace: String,
    pub redis_url: String,
    /// CA and client certificate for `rediss://`.
    pub redis_tls: RedisTls,
    pub kafka: KafkaSettings,
    /// Who the user is: a verified token, a gateway's header, or (local runs) the body.
    pub auth: AuthSettings,
    /// How long a produce may take before the apply answers 503.
    pub produce_timeout: Duration,
    pub server: ServerLimits,
    /// How long a sold-out event is answered 410 from memory before Redis is asked again.
    pub sold_out_recheck: Duration,
    /// Synchronous replication of the gate's writes (`WAIT`) before producing; off by
    /// default.
    pub replica_wait: Option<ReplicaWait>,
    /// After the stop signal, how long the api keeps serving with `/readyz` answering 503, so
    /// that Kubernetes takes it out of the Service's endpoints before it stops accepting.
    pub shutdown_delay: Duration,
    /// Keep `/readyz` current with background probes. Off only in tests that set the
    /// health by hand, to drive the api into paths a probe would close.
    pub readiness_probes: bool,
    /// Keys every record is signed with (`RECORD_KEYS_FILE`), for the consumer to tell the
    /// gate's coupons from forged ones; none: records go unsigned.
    pub record_keys: Option<Arc<RecordKeys>>,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            namespace: "default".into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_tls: RedisTls::default(),
            kafka: KafkaSettings::default(),
            auth: AuthSettings::Open,
            produce_timeout: Duration::from_secs(5),
            server: ServerLimits::default(),
            sold_out_recheck: Duration::from_secs(1),
            replica_wait: None,
            shutdown_delay: Duration::ZERO,
            readiness_probes: true,
            record_keys: None,
        }
    }
}

impl ApiSettings {
    /// Refuses settings under which a request could time out (408) while its coupon is
    /// issued: the gate, the optional `WAIT` and the produce must all fit in the request
    /// timeout, with room to spare.
    pub fn check(&self) -> Result<(), BuildError> {
        let wait = self.replica_wait.map_or(Duration::ZERO, |w| w.timeout);
        let needed = self.produce_timeout + wait + REDIS_AND_MARGIN;
        if needed > self.server.request_timeout {
            return Err(BuildError::Settings(format!(
                "request timeout {:?} must exceed the produce timeout {:?} plus the replica wait {:?} plus {:?} for Redis",
                self.server.request_timeout, self.produce_timeout, wait, REDIS_AND_MARGIN
            )));
        }
        Ok(())
    }
}

/// Room a request needs beyond its produce: the gate's round trip (bounded by the Redis
/// client's response timeout) and a margin.
const REDIS_AND_MARGIN: Duration = Duration::from_secs(3);

/// Everything that configures a consumer process.
#[derive(Clone, Debug)]
pub struct ConsumerSettings {
    /// `postgres://`, `mysql://`, `mariadb://` or `sqlite:` URL.
    pub database_url: String,
    pub redis_url: String,
    /// CA and client certificate for `rediss://`.
    pub redis_tls: RedisTls,
    pub kafka: KafkaSettings,
    pub topics: Vec<String>,
    /// Serve this namespace's events only: also consume the topics they declare (from the
    /// event registry, picked up within seconds of their provisioning), and pass over
    /// records and verification of other namespaces' events.
    pub event_namespace: Option<String>,
    pub group_id: String,
    /// Most records per SQL transaction.
    pub batch_size: usize,
    /// How long a batch waits for more records once the first arrived.
    pub batch_linger: Duration,
    /// How long an event whose Redis state may be lost stays closed (503) before it is
    /// restored from SQL, and how long past its delivery deadline an unwritten entry waits
    /// before it is healed: longer than the api's produce timeout, so records issued before
    /// have reached the broker.
    pub recovery_settle: Duration,
    /// How long records of an event with no configuration in Redis are held (the operator
    /// may be writing a lost configuration back) before they are failed as not provisioned.
    pub missing_event_patience: Duration,
    /// Keys records' signatures are verified with (`RECORD_KEYS_FILE`); none: records are
    /// checked against Redis alone.
    pub record_keys: Option<Arc<RecordKeys>>,
    /// Every api signs (`RECORD_SIGNATURES_REQUIRED`, once every api has the keys and the
    /// records produced before have been written): while Redis cannot tell whether a gate
    /// issued a record, one no valid signature vouches for is refused.
    pub signatures_required: bool,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self {
            database_url: "sqlite://coupons.db".into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_tls: RedisTls::default(),
            kafka: KafkaSettings::default(),
            topics: vec!["coupon_create".into()],
            event_namespace: None,
            group_id: "coupon-consumer".into(),
            batch_size: 500,
            batch_linger: Duration::from_millis(20),
            recovery_settle: Duration::from_secs(10),
            missing_event_patience: Duration::from_secs(300),
            record_keys: None,
            signatures_required: false,
        }
    }
}

/// Why a process could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("namespace: {0}")]
    Namespace(#[from] EventIdError),
    #[error(transparent)]
    Redis(#[from] ConnectError),
    #[error("Kafka client: {0}")]
    Kafka(#[from] KafkaError),
    #[error("listener: {0}")]
    Listener(#[from] std::io::Error),
    #[error("{0}")]
    Settings(String),
    #[error("identity: {0}")]
    Auth(#[from] crate::auth::AuthError),
}

/// A running api.
pub struct Api {
    pub state: Arc<ApiState>,
    pub local_addr: SocketAddr,
    /// Where `/metrics` and `/openapi.json` are served, if anywhere.
    pub ops_addr: Option<SocketAddr>,
    server: JoinHandle<()>,
}

impl Api {
    /// Builds the api and serves it on `listener`, and its ops routes on `ops` (`/metrics`,
    /// `/openapi.json`, the probes), until `shutdown` turns true. Redis is connected in the
    /// background; until then applies answer 503.
    pub fn start(
        settings: ApiSettings,
        listener: TcpListener,
        ops: Option<TcpListener>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, BuildError> {
        EventId::new(&settings.namespace, "x")?;
        settings.check()?;
        let health = Health::new(API_COMPONENTS);
        let metrics = Metrics::shared();
        let redis = RedisHandle::connect_in_background(RedisTarget::new(&settings.redis_url, settings.redis_tls.clone()))?;
        let producer = ProducerSlot::new(settings.kafka.clone(), settings.produce_timeout)?;
        let apply = Arc::new(
            ApplyService::new(
                settings.namespace.clone(),
                redis.clone(),
                producer,
                health.clone(),
                metrics.clone(),
                settings.sold_out_recheck,
                settings.replica_wait,
            )
            .with_record_keys(settings.record_keys.clone()),
        );
        let auth = Authenticator::start(&settings.auth)?;
        match &settings.auth {
            AuthSettings::Open => tracing::warn!("AUTH_MODE=open: the user is whatever the request body says; anyone can apply as anyone"),
            AuthSettings::Jwt(jwt) if jwt.audience.is_none() || jwt.issuer.is_none() => tracing::warn!(
                issuer = ?jwt.issuer,
                audience = ?jwt.audience,
                "AUTH_MODE=jwt without JWT_ISSUER and JWT_AUDIENCE: tokens the identity provider made for other clients are accepted"
            ),
            _ => tracing::info!(mode = auth.mode(), "identity checked"),
        }
        match auth.loaded() {
            None => health.set("identity", true),
            Some(mut loaded) => {
                let health = health.clone();
                tokio::spawn(async move {
                    if loaded.wait_for(|loaded| *loaded).await.is_ok() {
                        health.set("identity", true);
                    }
                });
            }
        }
        health.set("serving", true);
        let state = Arc::new(ApiState { apply, redis, auth, health: health.clone(), metrics, stats: http::StatsCache::default() });
        if settings.readiness_probes {
            spawn_api_probes(&state);
        }
        let local_addr = listener.local_addr()?;
        let ops_addr = ops.as_ref().map(TcpListener::local_addr).transpose()?;
        let stop_accepting = drain_before_stopping(shutdown, health, settings.shutdown_delay);
        if let Some(ops) = ops {
            let limits = http::ServerLimits::default();
            tokio::spawn(http::serve(ops, http::ops_routes(&state), limits, http::Shedding::default(), stop_accepting.clone()));
        }
        let shedding =
            http::Shedding { connections: state.metrics.shed_connections.clone(), requests: state.metrics.shed_requests.clone() };
        let server = tokio::spawn(http::serve(listener, http::router(state.clone()), settings.server, shedding, stop_accepting));
        Ok(Self { state, local_addr, ops_addr, server })
    }

    /// `http://<address>` of the listener.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// Waits until the server has stopped, then flushes records still queued.
    pub async fn stopped(self) {
        let _ = self.server.await;
        let state = self.state;
        let _ = tokio::task::spawn_blocking(move || state.apply.producer().flush(Duration::from_secs(10))).await;
    }
}

/// Turns `shutdown` into the server's stop signal, `delay` later: meanwhile `/readyz`
/// answers 503 (`serving` false) while requests are still served, so endpoints drain first.
fn drain_before_stopping(mut shutdown: watch::Receiver<bool>, health: Health, delay: Duration) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
        health.set("serving", false);
        if !delay.is_zero() {
            tracing::info!(?delay, "stopping: readiness off, still serving while endpoints drain");
            tokio::time::sleep(delay).await;
        }
        let _ = tx.send(true);
    });
    rx
}

/// Keeps `/readyz` current: Redis answers PING and will not evict the events' keys (its
/// `maxmemory-policy`, see `keyspace::Eviction`: otherwise nothing is issued either), a broker
/// answers a metadata request.
fn spawn_api_probes(state: &Arc<ApiState>) {
    let (redis, apply) = (state.redis.clone(), state.apply.clone());
    state.health.spawn_probe("redis", Duration::from_secs(1), move || {
        let (redis, apply) = (redis.clone(), apply.clone());
        async move {
            let Some(mut conn) = redis.get() else { return false };
            match coupon_core::redis::keyspace::eviction(&mut conn).await {
                Ok(eviction) => apply.set_eviction_risk(eviction.and_then(|e| e.check().err()).as_ref()),
                Err(_) => false,
            }
        }
    });
    let apply = state.apply.clone();
    state.health.spawn_probe("kafka", Duration::from_secs(2), move || {
        let apply = apply.clone();
        async move { tokio::task::spawn_blocking(move || apply.producer().broker_reachable(Duration::from_secs(2))).await.unwrap_or(false) }
    });
}

/// A running consumer.
pub struct Consumer {
    pub health: Health,
    pub metrics: Arc<Metrics>,
    /// Partitions the group assigned to it.
    pub assigned: Arc<AtomicUsize>,
    task: JoinHandle<Result<(), ConsumerError>>,
}

impl Consumer {
    /// Builds the consumer and runs it until `shutdown` turns true; with `ops`, serves
    /// `/healthz`, `/readyz` and `/metrics` on that listener.
    pub fn start(settings: ConsumerSettings, ops: Option<TcpListener>, shutdown: watch::Receiver<bool>) -> Result<Self, BuildError> {
        // A malformed DATABASE_URL is a configuration error, refused here: retried, it would
        // look like a database outage for ever.
        crate::sql::Store::check_url(&settings.database_url).map_err(BuildError::Settings)?;
        let health = Health::new(CONSUMER_COMPONENTS);
        let metrics = Metrics::shared();
        let assigned = Arc::new(AtomicUsize::new(0));
        let redis = RedisHandle::connect_in_background(RedisTarget::new(&settings.redis_url, settings.redis_tls.clone()))?;
        if let Some(listener) = ops {
            let router = http::ops_router(health.clone(), metrics.clone(), http::Readiness::AllDependencies);
            tokio::spawn(http::serve(listener, router, ServerLimits::default(), http::Shedding::default(), shutdown.clone()));
        }
        let task = tokio::spawn(crate::consumer::run(settings, redis, health.clone(), metrics.clone(), assigned.clone(), shutdown));
        Ok(Self { health, metrics, assigned, task })
    }

    /// Waits until the consumer has stopped (after the batch in hand).
    pub async fn stopped(self) -> Result<(), ConsumerError> {
        self.task.await.unwrap_or_else(|join| Err(ConsumerError::Task(join.to_string())))
    }
}

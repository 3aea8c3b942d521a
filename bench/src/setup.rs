//! What every part of the benchmark shares: where the services are, how big a run is, fresh
//! events, the api as the binary builds it, and crowds of applies.

use std::sync::Arc;
use std::time::Duration;

use coupon_core::event::{EventConfig, EventId};
use coupon_core::kafka::KafkaSettings;
use coupon_core::provision;
use coupon_core::redis::RedisHandle;
use coupon_service::app::{Api, ApiSettings};
use coupon_service::auth::AuthSettings;
use coupon_service::http::{self, ApiState, ServerLimits};
use coupon_service::tools::load::{self, LoadIdentity, LoadPlan, LoadReport};
use jiff::Timestamp;

/// Applies in flight in the throughput parts.
pub const CONCURRENCY: usize = 64;

/// How big each part's crowd is: the full run (`bench/run`) or `--quick` (every measure at
/// smaller sizes, in minutes). Each can be overridden by its variable.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sizes {
    pub quick: bool,
    /// Applies in the issuing, sold-out, reads and token parts.
    pub requests: usize,
    /// Rounds of each side where figures move from run to run (token and shard parts).
    pub rounds: usize,
    pub shard_requests: usize,
    pub gate_users: usize,
    pub consumer_rows: usize,
    pub large_event: i64,
}

impl Sizes {
    pub fn new(quick: bool) -> anyhow::Result<Self> {
        let size = |name: &str, full: &str, quick_size: &str| env(name, if quick { quick_size } else { full }).parse::<usize>();
        let sizes = Self {
            quick,
            requests: size("BENCH_ISSUING_REQUESTS", "20000", "5000")?,
            rounds: size("BENCH_ROUNDS", "5", "2")?,
            shard_requests: size("BENCH_SHARD_REQUESTS", "30000", "6000")?,
            gate_users: size("BENCH_GATE_USERS", "60000", "12000")?,
            consumer_rows: size("BENCH_ROWS", "20000", "5000")?,
            large_event: size("BENCH_LARGE_EVENT", "1000000", "100000")? as i64,
        };
        anyhow::ensure!(
            sizes.rounds >= 1
                && sizes.requests >= 1
                && sizes.shard_requests >= 1
                && sizes.gate_users >= 1
                && sizes.consumer_rows >= 1
                && sizes.large_event >= 1,
            "every BENCH_ size must be at least 1: {sizes:?}"
        );
        Ok(sizes)
    }
}

pub fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// Where the services are.
#[derive(Clone)]
pub struct Setup {
    pub redis_url: String,
    pub kafka: KafkaSettings,
    pub postgres_url: String,
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", Timestamp::now().as_microsecond())
}

/// Provisions an open event with `limit` coupons on a fresh topic.
pub async fn event(setup: &Setup, limit: i64) -> anyhow::Result<(EventId, String)> {
    let name = unique("bench");
    let id = EventId::new("bench", &name)?;
    let topic = format!("bench.{name}");
    let config = EventConfig::open_now(limit, &topic, Duration::from_secs(3600));
    let mut conn = RedisHandle::connect_with_deadline(&setup.redis_url, Duration::from_secs(10)).await?;
    provision::provision_event(&mut conn, &setup.kafka.admin()?, &id, &config, 3, 1).await?;
    Ok((id, topic))
}

/// Provisions an open event of `shards` shards with `limit` coupons on a fresh topic.
pub async fn sharded_event(setup: &Setup, limit: i64, shards: u16) -> anyhow::Result<EventId> {
    let name = unique("bench");
    let id = EventId::new("bench", &name)?;
    let topic = format!("bench.{name}");
    let config = EventConfig { shards, ..EventConfig::open_now(limit, &topic, Duration::from_secs(3600)) };
    let mut conn = RedisHandle::connect_with_deadline(&setup.redis_url, Duration::from_secs(10)).await?;
    provision::provision_event(&mut conn, &setup.kafka.admin()?, &id, &config, 3, 1).await?;
    Ok(id)
}

/// The median of some rounds' figures (the upper one of an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut values = values.to_vec();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Serves a router on an ephemeral port with the api's own server loop (so that both sides
/// of a comparison differ only in their handlers); returns its base URL.
pub async fn serve(app: axum::Router) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    std::mem::forget(stop); // runs for the whole benchmark
    tokio::spawn(http::serve(listener, app, ServerLimits::default(), http::Shedding::default(), stop_rx));
    Ok(url)
}

/// The api as the binary builds it, on an ephemeral port, once ready.
pub async fn api(setup: &Setup) -> anyhow::Result<(String, Arc<ApiState>)> {
    api_with(setup, AuthSettings::Open).await
}

pub async fn api_with(setup: &Setup, auth: AuthSettings) -> anyhow::Result<(String, Arc<ApiState>)> {
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    std::mem::forget(stop); // runs for the whole benchmark
    let settings = ApiSettings {
        namespace: "bench".into(),
        redis_url: setup.redis_url.clone(),
        kafka: setup.kafka.clone(),
        auth,
        ..ApiSettings::default()
    };
    let api = Api::start(settings, tokio::net::TcpListener::bind("127.0.0.1:0").await?, None, stop_rx)?;
    while !api.state.health.all_ready() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((api.base_url(), api.state.clone()))
}

pub async fn burst(url: &str, event: &str, requests: usize, concurrency: usize, prefix: &str) -> anyhow::Result<LoadReport> {
    burst_as(url, event, requests, concurrency, prefix, LoadIdentity::Body, None).await
}

pub async fn burst_as(
    url: &str,
    event: &str,
    requests: usize,
    concurrency: usize,
    prefix: &str,
    identity: LoadIdentity,
    users: Option<usize>,
) -> anyhow::Result<LoadReport> {
    load::run(&LoadPlan {
        base_url: url.to_owned(),
        event: event.to_owned(),
        requests,
        concurrency,
        same_user: false,
        users,
        user_prefix: prefix.to_owned(),
        ramp: Duration::ZERO,
        progress: false,
        identity,
        ca_file: None,
    })
    .await
}

//! A Redis connection that is established in the background with backoff, so that a
//! process starts (and reports not-ready) while Redis is still unreachable; over TLS
//! (`rediss://`) with the deployment's CA and optional client certificate; to one server or
//! to a Redis Cluster.
//!
//! `REDIS_URL` names one server, any node of a cluster (the mode is detected: a node that
//! answers `cluster_enabled:1` is used as the seed of redis-rs's cluster client), or several
//! seed nodes separated by commas (`redis://a:6379,b:6379`: a node without a scheme takes
//! the first one's scheme and credentials). Every caller then holds a `RedisConnection`, which
//! sends a command to the one server, or to the master of the command's key slot (scripts
//! by their first key; `SCRIPT LOAD` after a NOSCRIPT goes to every node).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use tokio::sync::OnceCell;

use crate::retry::Backoff;
use crate::secrets::redact_url;

/// Why a Redis connection could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid Redis URL: {0}")]
    InvalidUrl(redis::RedisError),
    #[error("Redis at {url} not reachable within {waited:?}")]
    Unreachable { url: String, waited: Duration },
    #[error("Redis TLS: {0}")]
    Tls(String),
}

/// TLS material for `rediss://`: the CA that signed the server's certificate (else the
/// system's roots), and a client certificate and key for servers that require one
/// (`REDIS_CA_FILE`, `REDIS_CLIENT_CERT_FILE`, `REDIS_CLIENT_KEY_FILE`; PEM files). Read once
/// when the client is built: a rotated certificate takes a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedisTls {
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

impl RedisTls {
    fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.client_cert_file.is_some() || self.client_key_file.is_some()
    }
}

/// Which Redis, and how: a URL and its TLS material.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedisTarget {
    pub url: String,
    pub tls: RedisTls,
}

impl RedisTarget {
    pub fn new(url: impl Into<String>, tls: RedisTls) -> Self {
        Self { url: url.into(), tls }
    }

    /// The seed URLs: one, or several separated by commas (a node without a scheme takes the
    /// first one's scheme and credentials).
    fn seeds(&self) -> Vec<String> {
        let mut parts = self.url.split(',').map(str::trim).filter(|part| !part.is_empty());
        let Some(first) = parts.next() else { return vec![self.url.clone()] };
        let prefix = match first.find("://") {
            Some(scheme_end) => {
                let rest = &first[scheme_end + 3..];
                let userinfo = rest.find('@').map_or(0, |at| at + 1);
                &first[..scheme_end + 3 + userinfo]
            }
            None => "",
        };
        std::iter::once(first.to_owned())
            .chain(parts.map(|part| if part.contains("://") { part.to_owned() } else { format!("{prefix}{part}") }))
            .collect()
    }

    /// The TLS material, read and checked: a file that cannot be read, TLS files given for a
    /// plain `redis://` URL, or a certificate without its key are refused here, at start,
    /// rather than at the first connection. `None` without TLS files.
    fn certificates(&self) -> Result<Option<redis::TlsCertificates>, ConnectError> {
        if !self.tls.is_set() {
            return Ok(None);
        }
        if self.seeds().iter().any(|seed| !seed.starts_with("rediss://")) {
            return Err(ConnectError::Tls(format!(
                "REDIS_CA_FILE / REDIS_CLIENT_CERT_FILE given, but the URL {} is not rediss://",
                redact_url(&self.url)
            )));
        }
        let read =
            |what: &str, path: &PathBuf| std::fs::read(path).map_err(|e| ConnectError::Tls(format!("{what} {}: {e}", path.display())));
        let root_cert = self.tls.ca_file.as_ref().map(|path| read("REDIS_CA_FILE", path)).transpose()?;
        let client_tls = match (&self.tls.client_cert_file, &self.tls.client_key_file) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read("REDIS_CLIENT_CERT_FILE", cert)?,
                client_key: read("REDIS_CLIENT_KEY_FILE", key)?,
            }),
            (None, None) => None,
            _ => return Err(ConnectError::Tls("REDIS_CLIENT_CERT_FILE and REDIS_CLIENT_KEY_FILE go together".into())),
        };
        Ok(Some(redis::TlsCertificates { client_tls, root_cert }))
    }

    /// The clients: one for the first seed (a single server, or the node that tells the
    /// mode) and the settings of the cluster's, both checked here.
    fn connector(&self) -> Result<Connector, ConnectError> {
        let certificates = self.certificates()?;
        let seeds = self.seeds();
        let single = match &certificates {
            None => redis::Client::open(seeds[0].as_str()),
            Some(certs) => redis::Client::build_with_tls(seeds[0].as_str(), certs.clone()),
        }
        .map_err(ConnectError::InvalidUrl)?;
        let cluster = ClusterSettings { seeds: seeds.clone(), certificates };
        cluster.client(&[]).map_err(ConnectError::InvalidUrl)?;
        Ok(Connector { single, cluster, several_seeds: seeds.len() > 1 })
    }

    /// The client of a single server (its URL checked, TLS material read).
    pub fn client(&self) -> Result<redis::Client, ConnectError> {
        Ok(self.connector()?.single)
    }
}

/// How long a connection attempt or a command may take before it counts as failed.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Retries of a cluster command (after MOVED, ASK, TRYAGAIN or a lost connection, with the
/// slot map refreshed in between): enough to ride out a failover's election.
const CLUSTER_RETRIES: u32 = 6;

/// The clients a `RedisTarget` connects with.
struct Connector {
    single: redis::Client,
    cluster: ClusterSettings,
    several_seeds: bool,
}

/// How to (re)build the cluster client: the seeds, the TLS material.
#[derive(Clone)]
struct ClusterSettings {
    seeds: Vec<String>,
    certificates: Option<redis::TlsCertificates>,
}

impl ClusterSettings {
    /// A client seeded with the configured seeds and the nodes seen since (so that a seed
    /// that died does not stop a reconnection). The scheme and credentials of the first seed
    /// apply to every node.
    fn client(&self, known_nodes: &[String]) -> RedisResult<ClusterClient> {
        let prefix = self.seeds[0].split_once("://").map_or(String::new(), |(scheme, rest)| {
            let userinfo = rest.find('@').map_or("", |at| &rest[..=at]);
            format!("{scheme}://{userinfo}")
        });
        let mut nodes = self.seeds.clone();
        nodes.extend(known_nodes.iter().map(|node| format!("{prefix}{node}")));
        let mut builder = ClusterClientBuilder::new(nodes).connection_timeout(TIMEOUT).response_timeout(TIMEOUT).retries(CLUSTER_RETRIES);
        if let Some(certs) = &self.certificates {
            builder = builder.certs(certs.clone());
        }
        builder.build()
    }
}

impl Connector {
    /// Connects in the mode the server tells: several seeds, or a first seed that answers
    /// `cluster_enabled:1`, mean a cluster.
    async fn connect(&self) -> RedisResult<RedisConnection> {
        if !self.several_seeds {
            let mut single = ConnectionManager::new_with_config(self.single.clone(), manager_config()).await?;
            let info: String = redis::cmd("INFO").arg("cluster").query_async(&mut single).await?;
            if !info.contains("cluster_enabled:1") {
                return Ok(RedisConnection::Single(single));
            }
        }
        Ok(RedisConnection::Cluster(ClusterHandle::connect(self.cluster.clone()).await?))
    }
}

/// A cluster connection that is rebuilt when a node stops answering.
///
/// redis-rs's cluster client learns a new slot map only from MOVED/ASK answers: when a
/// master dies and its replica is promoted, requests for its slots keep going to the dead
/// address and never get a MOVED. So a connection error or a timeout here starts one
/// rebuild in the background (at most one at a time, at most every `REBUILD_INTERVAL`),
/// which reads the slot map afresh from the seeds and every node seen so far; the failed
/// request itself fails, and the caller's retry (a 503 the client repeats, the next pass)
/// goes to the new master.
#[derive(Clone)]
pub struct ClusterHandle {
    shared: Arc<ClusterShared>,
}

struct ClusterShared {
    settings: ClusterSettings,
    current: RwLock<ClusterConnection>,
    /// `host:port` of every node the slot map named at the last (re)build.
    known_nodes: RwLock<Vec<String>>,
    rebuilding: AtomicBool,
}

/// Least time between two rebuilds of a cluster connection.
const REBUILD_INTERVAL: Duration = Duration::from_millis(500);

impl ClusterHandle {
    async fn connect(settings: ClusterSettings) -> RedisResult<Self> {
        let mut conn = settings.client(&[])?.get_async_connection().await?;
        let known = cluster_nodes(&mut conn).await.unwrap_or_default();
        Ok(Self {
            shared: Arc::new(ClusterShared {
                settings,
                current: RwLock::new(conn),
                known_nodes: RwLock::new(known),
                rebuilding: AtomicBool::new(false),
            }),
        })
    }

    fn connection(&self) -> ClusterConnection {
        self.shared.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// After a failed request: rebuilds the connection if the failure says a node is gone.
    fn failed(&self, error: &redis::RedisError) {
        let node_gone = error.is_io_error()
            || error.is_timeout()
            || error.is_connection_refusal()
            || error.is_connection_dropped()
            || matches!(error.kind(), redis::ErrorKind::ClusterDown | redis::ErrorKind::TryAgain);
        if !node_gone || self.shared.rebuilding.swap(true, Ordering::AcqRel) {
            return;
        }
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let known = shared.known_nodes.read().unwrap_or_else(|e| e.into_inner()).clone();
            let rebuilt = async { shared.settings.client(&known)?.get_async_connection().await };
            match rebuilt.await {
                Ok(mut conn) => {
                    if let Ok(nodes) = cluster_nodes(&mut conn).await {
                        *shared.known_nodes.write().unwrap_or_else(|e| e.into_inner()) = nodes;
                    }
                    *shared.current.write().unwrap_or_else(|e| e.into_inner()) = conn;
                    tracing::info!("rebuilt the Redis Cluster connection with a fresh slot map");
                }
                Err(error) => tracing::warn!(%error, "cannot rebuild the Redis Cluster connection yet"),
            }
            tokio::time::sleep(REBUILD_INTERVAL).await;
            shared.rebuilding.store(false, Ordering::Release);
        });
    }
}

/// Every node (`host:port`, masters and replicas) of the cluster's slot map.
async fn cluster_nodes(conn: &mut ClusterConnection) -> RedisResult<Vec<String>> {
    let ranges: Vec<Vec<Value>> = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
    let mut nodes: Vec<String> = ranges
        .iter()
        .flat_map(|range| range.iter().skip(2))
        .filter_map(|node| match node {
            Value::Array(fields) if fields.len() >= 2 => {
                let host: String = redis::from_redis_value(&fields[0]).ok()?;
                let port: u16 = redis::from_redis_value(&fields[1]).ok()?;
                // `?` or empty: the node does not announce a usable endpoint.
                (!host.is_empty() && host != "?" && port > 0).then(|| format!("{host}:{port}"))
            }
            _ => None,
        })
        .collect();
    nodes.sort();
    nodes.dedup();
    Ok(nodes)
}

/// A connection to one Redis server (which reconnects by itself) or to a Redis Cluster
/// (which routes each command to its slot's master and follows the slot map through
/// failovers and resharding). Cheap to clone: clones share the connections.
#[derive(Clone)]
pub enum RedisConnection {
    Single(ConnectionManager),
    Cluster(ClusterHandle),
}

impl RedisConnection {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Sends `cmd`, which names no key, to the master that holds `key` (a cluster) or to the
    /// one server: `WAIT` must reach the master that took the writes it waits for, and
    /// `TIME`/`INFO` the master whose clock or state a script of that key sees.
    pub async fn query_at<T: redis::FromRedisValue>(&mut self, key: &str, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Self::Single(conn) => cmd.query_async(conn).await,
            Self::Cluster(handle) => {
                let route = Route::new(key_slot(key), SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                let value = handle.connection().route_command(cmd, routing).await.inspect_err(|error| handle.failed(error))?;
                redis::from_redis_value(&value)
            }
        }
    }
}

/// The Redis Cluster slot of a key (CRC16 of its hash tag, or of the whole key).
pub fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        bytes[open + 1..].iter().position(|&b| b == b'}').filter(|&len| len > 0).map(|len| &bytes[open + 1..open + 1 + len])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(bytes)) % 16384
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(handle) => {
                let (handle, mut conn) = (handle.clone(), handle.connection());
                Box::pin(async move { conn.req_packed_command(cmd).await.inspect_err(|error| handle.failed(error)) })
            }
        }
    }

    fn req_packed_commands<'a>(&'a mut self, cmd: &'a Pipeline, offset: usize, count: usize) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            Self::Cluster(handle) => {
                let (handle, mut conn) = (handle.clone(), handle.connection());
                Box::pin(async move { conn.req_packed_commands(cmd, offset, count).await.inspect_err(|error| handle.failed(error)) })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(_) => 0,
        }
    }
}

impl From<&str> for RedisTarget {
    fn from(url: &str) -> Self {
        Self::new(url, RedisTls::default())
    }
}

impl From<&String> for RedisTarget {
    fn from(url: &String) -> Self {
        Self::new(url.as_str(), RedisTls::default())
    }
}

impl From<String> for RedisTarget {
    fn from(url: String) -> Self {
        Self::new(url, RedisTls::default())
    }
}

/// Shared handle; cheap to clone. `get()` is `None` until the first connection succeeded,
/// after which the connection reconnects by itself.
#[derive(Clone)]
pub struct RedisHandle {
    inner: Arc<OnceCell<RedisConnection>>,
    url: Arc<str>,
}

impl RedisHandle {
    /// Starts connecting in the background and returns at once.
    pub fn connect_in_background(target: impl Into<RedisTarget>) -> Result<Self, ConnectError> {
        let target = target.into();
        let connector = target.connector()?;
        let handle = Self { inner: Arc::new(OnceCell::new()), url: redact_url(&target.url).into() };
        let cell = handle.inner.clone();
        let shown = handle.url.clone();
        tokio::spawn(async move {
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            loop {
                match connector.connect().await {
                    Ok(conn) => {
                        tracing::info!(redis = %shown, cluster = conn.is_cluster(), "connected to Redis");
                        let _ = cell.set(conn);
                        return;
                    }
                    Err(error) => {
                        let wait = backoff.next_delay();
                        tracing::warn!(redis = %shown, %error, retry_in = ?wait, "cannot reach Redis");
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        });
        Ok(handle)
    }

    /// Connects now, retrying with backoff until `deadline` passes (for CLI commands).
    pub async fn connect_with_deadline(target: impl Into<RedisTarget>, deadline: Duration) -> Result<RedisConnection, ConnectError> {
        let handle = Self::connect_in_background(target)?;
        handle.wait_for(deadline).await
    }

    /// The connection, once there is one.
    pub fn get(&self) -> Option<RedisConnection> {
        self.inner.get().cloned()
    }

    /// The URL, password hidden, for messages.
    pub fn shown_url(&self) -> &str {
        &self.url
    }

    /// Waits until connected.
    pub async fn wait(&self) -> RedisConnection {
        loop {
            if let Some(conn) = self.get() {
                return conn;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until connected, at most `deadline`.
    pub async fn wait_for(&self, deadline: Duration) -> Result<RedisConnection, ConnectError> {
        tokio::time::timeout(deadline, self.wait())
            .await
            .map_err(|_| ConnectError::Unreachable { url: self.url.to_string(), waited: deadline })
    }

    /// Whether Redis answers right now (readiness probes).
    pub async fn ping(&self) -> bool {
        match self.get() {
            Some(mut conn) => redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok(),
            None => false,
        }
    }
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(TIMEOUT)
        .set_response_timeout(TIMEOUT)
        .set_number_of_retries(2)
        .set_max_delay(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_inherit_the_first_scheme_and_credentials() {
        let target = RedisTarget::from("rediss://:secret@a:7000, b:7001,redis://c:7002");
        assert_eq!(target.seeds(), vec!["rediss://:secret@a:7000", "rediss://:secret@b:7001", "redis://c:7002"]);
        assert_eq!(RedisTarget::from("redis://one:6379").seeds(), vec!["redis://one:6379"]);
    }

    #[test]
    fn slots_follow_the_hash_tag() {
        // Values from the Redis Cluster specification.
        assert_eq!(key_slot("123456789"), 12739);
        assert_eq!(key_slot("{user1000}.following"), key_slot("{user1000}.followers"));
        assert_eq!(key_slot("foo{}{bar}"), key_slot("foo{}{bar}"), "an empty tag hashes the whole key");
        assert_ne!(key_slot("foo{}{bar}"), key_slot("bar"));
    }
}

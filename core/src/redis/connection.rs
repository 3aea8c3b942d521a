//! A Redis connection that is established in the background with backoff, so that a
//! process starts (and reports not-ready) while Redis is still unreachable; over TLS
//! (`rediss://`) with the deployment's CA and optional client certificate.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
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

    /// The client, TLS material read and checked: a file that cannot be read, TLS files
    /// given for a plain `redis://` URL, or a certificate without its key are refused here,
    /// at start, rather than at the first connection.
    pub fn client(&self) -> Result<redis::Client, ConnectError> {
        if !self.tls.is_set() {
            return redis::Client::open(self.url.as_str()).map_err(ConnectError::InvalidUrl);
        }
        if !self.url.starts_with("rediss://") {
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
        redis::Client::build_with_tls(self.url.as_str(), redis::TlsCertificates { client_tls, root_cert }).map_err(ConnectError::InvalidUrl)
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
/// after which the multiplexed `ConnectionManager` reconnects by itself.
#[derive(Clone)]
pub struct RedisHandle {
    inner: Arc<OnceCell<ConnectionManager>>,
    url: Arc<str>,
}

impl RedisHandle {
    /// Starts connecting in the background and returns at once.
    pub fn connect_in_background(target: impl Into<RedisTarget>) -> Result<Self, ConnectError> {
        let target = target.into();
        let client = target.client()?;
        let handle = Self { inner: Arc::new(OnceCell::new()), url: redact_url(&target.url).into() };
        let cell = handle.inner.clone();
        let shown = handle.url.clone();
        tokio::spawn(async move {
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            loop {
                match ConnectionManager::new_with_config(client.clone(), manager_config()).await {
                    Ok(conn) => {
                        tracing::info!(redis = %shown, "connected to Redis");
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
    pub async fn connect_with_deadline(target: impl Into<RedisTarget>, deadline: Duration) -> Result<ConnectionManager, ConnectError> {
        let handle = Self::connect_in_background(target)?;
        handle.wait_for(deadline).await
    }

    /// The connection, once there is one.
    pub fn get(&self) -> Option<ConnectionManager> {
        self.inner.get().cloned()
    }

    /// The URL, password hidden, for messages.
    pub fn shown_url(&self) -> &str {
        &self.url
    }

    /// Waits until connected.
    pub async fn wait(&self) -> ConnectionManager {
        loop {
            if let Some(conn) = self.get() {
                return conn;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until connected, at most `deadline`.
    pub async fn wait_for(&self, deadline: Duration) -> Result<ConnectionManager, ConnectError> {
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
        .set_connection_timeout(Duration::from_secs(2))
        .set_response_timeout(Duration::from_secs(2))
        .set_number_of_retries(2)
        .set_max_delay(1000)
}

//! A Redis connection that is established in the background with backoff, so that a
//! process starts (and reports not-ready) while Redis is still unreachable.

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
    pub fn connect_in_background(url: &str) -> Result<Self, ConnectError> {
        let client = redis::Client::open(url).map_err(ConnectError::InvalidUrl)?;
        let handle = Self { inner: Arc::new(OnceCell::new()), url: redact_url(url).into() };
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
    pub async fn connect_with_deadline(url: &str, deadline: Duration) -> Result<ConnectionManager, ConnectError> {
        let handle = Self::connect_in_background(url)?;
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

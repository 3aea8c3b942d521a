//! A Redis connection that is established in the background with backoff, so that a
//! process starts (and reports not-ready) while Redis is still unreachable.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use crate::retry::Backoff;

/// Shared handle; cheap to clone. `get()` is `None` until the first connection succeeded,
/// after which the multiplexed `ConnectionManager` reconnects by itself.
#[derive(Clone)]
pub struct RedisHandle {
    inner: Arc<OnceCell<ConnectionManager>>,
    url: Arc<str>,
}

impl RedisHandle {
    /// Starts connecting in the background and returns at once.
    pub fn connect_in_background(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).map_err(|e| anyhow::anyhow!("invalid Redis URL: {e}"))?;
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
    pub async fn connect_with_deadline(url: &str, deadline: Duration) -> anyhow::Result<ConnectionManager> {
        let handle = Self::connect_in_background(url)?;
        tokio::time::timeout(deadline, handle.wait())
            .await
            .map_err(|_| anyhow::anyhow!("Redis at {} not reachable within {deadline:?}", handle.url))
    }

    pub fn get(&self) -> Option<ConnectionManager> {
        self.inner.get().cloned()
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
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(2))
        .set_response_timeout(Duration::from_secs(2))
        .set_number_of_retries(2)
        .set_max_delay(1000)
}

/// Hides a password in a URL before it is logged.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..scheme_end + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(redact_url("redis://:s3cret@host:6379/0"), "redis://:***@host:6379/0");
        assert_eq!(redact_url("postgres://app:pw@db/x"), "postgres://app:***@db/x");
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact_url("sqlite://coupons.db"), "sqlite://coupons.db");
    }
}

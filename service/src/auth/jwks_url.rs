//! The identity provider's JWKS fetched from its URL (`JWT_JWKS_URL`), so the provider's key
//! rotation needs nothing of ours: no ConfigMap to copy keys into, no restart.
//!
//! - Fetched over https only (the keys decide who every user is), with the machine's roots
//!   or `JWT_JWKS_CA_FILE`; at most `MAX_DOCUMENT_BYTES`, within `FETCH_TIMEOUT`.
//! - Fetched again after the provider's `Cache-Control: max-age` (kept between 1 minute and
//!   1 hour; 5 minutes without one), and whenever a token names a key id the set lacks: a
//!   provider may sign with a new key the moment it publishes it. Those fetches are one at a
//!   time, and at most one per `UNKNOWN_KID_REFETCH_EVERY`, so tokens with made-up key ids
//!   cost the provider at most one request per interval; a request waits for that fetch
//!   (at most `UNKNOWN_KID_WAIT`) and is then checked against what it brought.
//! - A provider down, answering an error or a document without a usable key keeps the last
//!   good set in use (logged, fetched again with backoff). Before the first good set the api
//!   is not ready (`identity` in `/readyz`): it starts, and retries, instead of failing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::HeaderMap;
use tokio::sync::{watch, Mutex};
use tokio::time::Instant;

use super::jwt::{parse_jwks, KeySet};

/// Largest JWKS document taken: providers publish a few keys, a few KiB.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// One fetch, connection included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Fewest seconds between two fetches a token's unknown key id asks for.
pub const UNKNOWN_KID_REFETCH_EVERY: Duration = Duration::from_secs(2);
/// Longest a request with an unknown key id waits for the fetch it asked for.
pub const UNKNOWN_KID_WAIT: Duration = Duration::from_secs(5);
/// Refresh interval without `Cache-Control: max-age`.
const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// Bounds on the provider's `max-age`.
const MIN_REFRESH: Duration = Duration::from_secs(60);
const MAX_REFRESH: Duration = Duration::from_secs(3600);
/// Backoff between failed fetches.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Where the keys come from.
#[derive(Clone, Debug)]
pub struct JwksUrl {
    pub url: reqwest::Url,
    /// PEM certificates to trust besides the machine's roots (a private CA's).
    pub ca_pem: Option<Vec<u8>>,
}

impl JwksUrl {
    /// Refuses anything but an https URL.
    pub fn new(url: &str, ca_pem: Option<Vec<u8>>) -> Result<Self, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("JWT_JWKS_URL {url:?} is not a URL: {e}"))?;
        if parsed.scheme() != "https" {
            return Err(format!("JWT_JWKS_URL {url:?} must be an https:// URL: the keys that prove every user must not travel in clear"));
        }
        if let Some(pem) = &ca_pem {
            let certificates =
                reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("JWT_JWKS_CA_FILE: not PEM certificates: {e}"))?;
            if certificates.is_empty() {
                return Err("JWT_JWKS_CA_FILE: no PEM certificate in it".into());
            }
        }
        Ok(Self { url: parsed, ca_pem })
    }
}

/// What fetching holds between fetches (behind the one-at-a-time lock).
struct FetchState {
    last_attempt: Option<Instant>,
    /// The document the keys in use came from: the same document again changes nothing
    /// (and keeps the tokens verified with those keys remembered).
    in_use: Option<Vec<u8>>,
}

/// Fetches and refreshes the key set of one URL.
pub(super) struct RemoteJwks {
    source: JwksUrl,
    client: reqwest::Client,
    keys: Arc<RwLock<Arc<KeySet>>>,
    state: Mutex<FetchState>,
    /// Fetches started (each under the lock): a waiter holding the lock that sees it moved
    /// since it asked knows a fetch started after it asked has finished.
    started: AtomicU64,
    loaded: watch::Sender<bool>,
}

impl RemoteJwks {
    pub(super) fn new(source: JwksUrl, keys: Arc<RwLock<Arc<KeySet>>>) -> Result<Arc<Self>, String> {
        let mut client = reqwest::Client::builder()
            .https_only(true)
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("coupon-service/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &source.ca_pem {
            for certificate in reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("JWT_JWKS_CA_FILE: {e}"))? {
                client = client.add_root_certificate(certificate);
            }
        }
        let client = client.build().map_err(|e| format!("JWT_JWKS_URL: cannot build the HTTP client: {e}"))?;
        let state = Mutex::new(FetchState { last_attempt: None, in_use: None });
        Ok(Arc::new(Self { source, client, keys, state, started: AtomicU64::new(0), loaded: watch::channel(false).0 }))
    }

    /// Turns true once a usable key set was fetched, and stays true (the last good set is
    /// kept through any outage).
    pub(super) fn loaded(&self) -> watch::Receiver<bool> {
        self.loaded.subscribe()
    }

    /// Fetches until the first good set, then after each `max-age`, with backoff on failure.
    pub(super) async fn run(self: Arc<Self>) {
        let mut retry = RETRY_FIRST;
        loop {
            let outcome = {
                let mut state = self.state.lock().await;
                self.refresh(&mut state).await
            };
            let next = match outcome {
                Ok(max_age) => {
                    retry = RETRY_FIRST;
                    max_age.map_or(DEFAULT_REFRESH, |age| age.clamp(MIN_REFRESH, MAX_REFRESH))
                }
                Err(()) => {
                    let wait = retry;
                    retry = (retry * 2).min(RETRY_MAX);
                    wait
                }
            };
            tokio::time::sleep(next).await;
        }
    }

    /// A token named a key id the set lacks: returns once a fetch that started after the
    /// call has finished (its own, or one that another request asked for meanwhile: the
    /// requests of a crowd share one), or after `UNKNOWN_KID_WAIT`. One fetch at a time, at
    /// most one per `UNKNOWN_KID_REFETCH_EVERY`.
    pub(super) async fn refetch_for_unknown_kid(&self) {
        let asked_at = self.started.load(Ordering::Acquire);
        let _ = tokio::time::timeout(UNKNOWN_KID_WAIT, async {
            let mut state = self.state.lock().await;
            if self.started.load(Ordering::Acquire) != asked_at {
                // Started after the call, and finished: the lock is free.
                return;
            }
            if let Some(last) = state.last_attempt {
                tokio::time::sleep_until(last + UNKNOWN_KID_REFETCH_EVERY).await;
            }
            let _ = self.refresh(&mut state).await;
        })
        .await;
    }

    /// One fetch: a new usable document replaces the keys. `Ok` with the provider's
    /// `max-age`; `Err` (logged) when the keys in use stay because nothing usable came.
    async fn refresh(&self, state: &mut FetchState) -> Result<Option<Duration>, ()> {
        state.last_attempt = Some(Instant::now());
        self.started.fetch_add(1, Ordering::Release);
        let outcome = self.fetch().await;
        let url = self.source.url.as_str();
        let keeping = if *self.loaded.borrow() { "keeping the keys in use" } else { "no keys yet: the api is not ready" };
        let (document, max_age) = match outcome {
            Ok(fetched) => fetched,
            Err(error) => {
                tracing::error!(url, %error, "cannot fetch the JWKS; {keeping}");
                return Err(());
            }
        };
        if state.in_use.as_ref() == Some(&document) {
            return Ok(max_age);
        }
        match parse_jwks(&document) {
            Ok(new) => {
                tracing::info!(url, keys = new.len(), "JWKS fetched; keys in use replaced");
                if let Ok(mut current) = self.keys.write() {
                    *current = KeySet::new(new);
                }
                state.in_use = Some(document);
                self.loaded.send_replace(true);
                Ok(max_age)
            }
            Err(error) => {
                tracing::error!(url, %error, "the JWKS fetched cannot be used; {keeping}");
                Err(())
            }
        }
    }

    async fn fetch(&self) -> Result<(Vec<u8>, Option<Duration>), String> {
        let mut response = self.client.get(self.source.url.clone()).send().await.map_err(describe)?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("the provider answered {status}"));
        }
        if response.content_length().is_some_and(|length| length > MAX_DOCUMENT_BYTES as u64) {
            return Err(format!("the document is larger than {MAX_DOCUMENT_BYTES} bytes"));
        }
        let max_age = max_age(response.headers());
        let mut document = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(describe)? {
            if document.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(format!("the document is larger than {MAX_DOCUMENT_BYTES} bytes"));
            }
            document.extend_from_slice(&chunk);
        }
        Ok((document, max_age))
    }
}

/// An error with its causes (reqwest's own message names only the outermost).
fn describe(error: reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `max-age` of a `Cache-Control` header, unless the response says not to keep it.
fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let directives = headers.get_all(reqwest::header::CACHE_CONTROL).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(','));
    let mut age = None;
    for directive in directives {
        let directive = directive.trim().to_ascii_lowercase();
        if directive == "no-store" || directive == "no-cache" {
            return None;
        }
        if let Some(seconds) = directive.strip_prefix("max-age=") {
            age = seconds.trim_matches('"').parse().ok().map(Duration::from_secs);
        }
    }
    age
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn only_https_is_taken() {
        assert!(JwksUrl::new("https://id.shop.test/.well-known/jwks.json", None).is_ok());
        let clear = JwksUrl::new("http://id.shop.test/jwks.json", None).unwrap_err();
        assert!(clear.contains("JWT_JWKS_URL") && clear.contains("https://"), "{clear}");
        assert!(JwksUrl::new("id.shop.test/jwks.json", None).unwrap_err().contains("not a URL"));
        assert!(JwksUrl::new("https://id.shop.test/jwks.json", Some(b"not pem".to_vec())).unwrap_err().contains("JWT_JWKS_CA_FILE"));
    }

    #[test]
    fn max_age_is_read_unless_the_response_may_not_be_kept() {
        let headers = |values: &[&str]| {
            let mut map = HeaderMap::new();
            for value in values {
                map.append(reqwest::header::CACHE_CONTROL, HeaderValue::from_str(value).unwrap());
            }
            map
        };
        assert_eq!(max_age(&headers(&["public, max-age=3600, must-revalidate"])), Some(Duration::from_secs(3600)));
        assert_eq!(max_age(&headers(&["public", "Max-Age=120"])), Some(Duration::from_secs(120)));
        assert_eq!(max_age(&headers(&["no-store, max-age=600"])), None);
        assert_eq!(max_age(&headers(&["max-age=soon"])), None);
        assert_eq!(max_age(&headers(&[])), None);
    }
}

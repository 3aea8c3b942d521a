//! The identity provider's JWKS fetched from its URL (`JWT_JWKS_URL`), so the provider's key
//! rotation needs nothing of ours: no ConfigMap to copy keys into, no restart.
//!
//! - Fetched over https only (the keys decide who every user is), with the machine's roots
//!   or `JWT_JWKS_CA_FILE`; at most `MAX_DOCUMENT_BYTES`, within `FETCH_TIMEOUT`.
//! - Fetched by one task of its own, so a request that gives up (its client gone, its wait
//!   over) never cuts a fetch short for the others: after the provider's
//!   `Cache-Control: max-age` (kept between 1 minute and 1 hour; 5 minutes without one), and
//!   when a token names a key id the set lacks (a provider may sign with a new key the
//!   moment it publishes it), then no sooner than `FETCH_COOLDOWN` after the last fetch:
//!   however many such tokens come, each api asks the provider at most once per cool-down.
//! - A request whose key id the set lacks waits (at most `UNKNOWN_KID_WAIT`) for a fetch
//!   that starts after it asked, then is checked again: a crowd arriving with a freshly
//!   rotated key is served, not refused. At most `MAX_WAITING` requests wait at once (a
//!   quarter of the default in-flight cap); beyond, and when the wait runs out, the answer is
//!   503 with `Retry-After` (the key may be real: the client should come back), never a
//!   401. A token without a key id never waits: it asks for a fetch and is refused.
//! - A provider down, answering an error or a document without a usable key keeps the last
//!   good set in use (logged, fetched again with backoff). Before the first good set the api
//!   is not ready (`identity` in `/readyz`): it starts, and retries, instead of failing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::HeaderMap;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::jwt::{parse_jwks, KeySet};

/// Largest JWKS document taken: providers publish a few keys, a few KiB.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// One fetch, connection included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Least time between the starts of two fetches asked for by tokens (per api process).
pub const FETCH_COOLDOWN: Duration = Duration::from_secs(5);
/// Longest a request with an unknown key id waits for a fetch.
pub const UNKNOWN_KID_WAIT: Duration = Duration::from_secs(12);
/// Most requests waiting for a fetch at once.
pub const MAX_WAITING: usize = 256;
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
    /// Refuses anything but an https URL, and a CA file without a certificate.
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

/// What a request's wait for a fetch came to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Waited {
    /// A fetch that started after the request asked has finished: check again.
    Fetched,
    /// Not waited (too many waiting) or the wait ran out: ask the client to come back.
    Busy,
}

/// Fetches and refreshes the key set of one URL.
pub(super) struct RemoteJwks {
    source: JwksUrl,
    client: reqwest::Client,
    keys: Arc<RwLock<Arc<KeySet>>>,
    /// Tokens asked for a fetch.
    wanted: Notify,
    /// Fetches started so far; a request takes this number as its ticket before it checks
    /// its token, and waits for a fetch with a greater one.
    started: AtomicU64,
    /// The number of the last fetch finished.
    finished: watch::Sender<u64>,
    loaded: watch::Sender<bool>,
    /// Requests waiting for a fetch.
    waiting: std::sync::Mutex<usize>,
}

/// One place among the waiting requests, given back when the request is done or dropped.
struct WaitingPlace<'a>(&'a std::sync::Mutex<usize>);

impl Drop for WaitingPlace<'_> {
    fn drop(&mut self) {
        if let Ok(mut waiting) = self.0.lock() {
            *waiting -= 1;
        }
    }
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
        Ok(Arc::new(Self {
            source,
            client,
            keys,
            wanted: Notify::new(),
            started: AtomicU64::new(0),
            finished: watch::channel(0).0,
            loaded: watch::channel(false).0,
            waiting: std::sync::Mutex::new(0),
        }))
    }

    /// Turns true once a usable key set was fetched, and stays true (the last good set is
    /// kept through any outage).
    pub(super) fn loaded(&self) -> watch::Receiver<bool> {
        self.loaded.subscribe()
    }

    /// The fetch task: fetches until the first good set, then after each `max-age` (with
    /// backoff on failure), and when tokens ask, no sooner than `FETCH_COOLDOWN` after the
    /// last fetch started.
    pub(super) async fn run(self: Arc<Self>) {
        let mut retry = RETRY_FIRST;
        loop {
            let started_at = Instant::now();
            let next = match self.refresh().await {
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
            tokio::select! {
                _ = tokio::time::sleep_until(started_at + next) => {}
                // Asked for: no sooner than the cool-down, nor later than a retry already due.
                _ = self.wanted.notified() => tokio::time::sleep_until(started_at + next.min(FETCH_COOLDOWN)).await,
            }
        }
    }

    /// The ticket a request takes before it checks its token against the keys in use.
    pub(super) fn ticket(&self) -> u64 {
        self.started.load(Ordering::Acquire)
    }

    /// A token checked after `ticket` named a key id the set lacks: waits until a fetch that
    /// started after the ticket has finished, unless too many requests wait already (a fetch
    /// is asked for all the same).
    pub(super) async fn wait_for_fetch(&self, ticket: u64) -> Waited {
        self.wanted.notify_one();
        let Some(_place) = self.take_waiting_place() else { return Waited::Busy };
        let mut finished = self.finished.subscribe();
        let fetched = tokio::time::timeout(UNKNOWN_KID_WAIT, finished.wait_for(|done| *done > ticket)).await.is_ok_and(|seen| seen.is_ok());
        if fetched {
            Waited::Fetched
        } else {
            Waited::Busy
        }
    }

    /// A token without a key id failed every key: perhaps a new one, so a fetch is asked
    /// for, without waiting (the cool-down bounds what that costs).
    pub(super) fn ask_for_fetch(&self) {
        self.wanted.notify_one();
    }

    fn take_waiting_place(&self) -> Option<WaitingPlace<'_>> {
        let mut waiting = self.waiting.lock().ok()?;
        if *waiting >= MAX_WAITING {
            return None;
        }
        *waiting += 1;
        Some(WaitingPlace(&self.waiting))
    }

    /// One fetch: a new usable document replaces the keys. `Ok` with the provider's
    /// `max-age`; `Err` (logged) when the keys in use stay because nothing usable came.
    async fn refresh(&self) -> Result<Option<Duration>, ()> {
        let number = self.started.fetch_add(1, Ordering::AcqRel) + 1;
        let outcome = self.fetch_and_replace().await;
        self.finished.send_replace(number);
        outcome
    }

    async fn fetch_and_replace(&self) -> Result<Option<Duration>, ()> {
        let url = self.source.url.as_str();
        let keeping = if *self.loaded.borrow() { "keeping the keys in use" } else { "no keys yet: the api is not ready" };
        let (document, max_age) = match self.fetch().await {
            Ok(fetched) => fetched,
            Err(error) => {
                tracing::error!(url, %error, "cannot fetch the JWKS; {keeping}");
                return Err(());
            }
        };
        let new = match parse_jwks(&document) {
            Ok(new) => new,
            Err(error) => {
                tracing::error!(url, %error, "the JWKS fetched cannot be used; {keeping}");
                return Err(());
            }
        };
        if let Ok(mut current) = self.keys.write() {
            // The same document again changes nothing (and keeps the tokens verified with
            // those keys remembered).
            if current.source.as_deref() != Some(document.as_slice()) {
                tracing::info!(url, keys = new.len(), "JWKS fetched; keys in use replaced");
                *current = KeySet::from_document(new, document);
            }
        }
        self.loaded.send_replace(true);
        Ok(max_age)
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

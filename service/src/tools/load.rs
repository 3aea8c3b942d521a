//! A flash-crowd load generator: many concurrent applies over keep-alive HTTP.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use hdrhistogram::Histogram;

/// What to send.
#[derive(Clone, Debug)]
pub struct LoadPlan {
    /// e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
    /// Event name in the api's namespace.
    pub event: String,
    /// Number of requests.
    pub requests: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Every request from the same user instead of distinct ones.
    pub same_user: bool,
    /// Requests come from this many users in turn (user `n % users`), as a crowd that
    /// retries; `None`: each request its own user.
    pub users: Option<usize>,
    /// User ids are `<prefix><n>`.
    pub user_prefix: String,
    /// Spread the request starts evenly over this long (zero: all at once).
    pub ramp: Duration,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// How each request says who its user is.
    pub identity: LoadIdentity,
    /// PEM file of a CA to trust besides the system's roots, for an `https://` api behind a
    /// private certificate.
    pub ca_file: Option<std::path::PathBuf>,
}

/// How the load's requests name their users, matching the api's `AUTH_MODE`.
#[derive(Clone, Default)]
pub enum LoadIdentity {
    /// `open`: the body's `userId`.
    #[default]
    Body,
    /// `header`: this header carries the user id.
    Header(String),
    /// `jwt`: a token per user signed with `key`, minted before the clock starts, with `sub`
    /// the user.
    Jwt {
        key: jsonwebtoken::EncodingKey,
        algorithm: jsonwebtoken::Algorithm,
        kid: Option<String>,
        issuer: Option<String>,
        audience: Option<String>,
    },
}

impl LoadIdentity {
    /// HS256 tokens signed with the api's `JWT_SECRET`.
    pub fn hs256(secret: &str, issuer: Option<String>, audience: Option<String>) -> Self {
        Self::Jwt {
            key: jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
            algorithm: jsonwebtoken::Algorithm::HS256,
            kid: None,
            issuer,
            audience,
        }
    }
}

impl std::fmt::Debug for LoadIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Body => f.write_str("Body"),
            Self::Header(name) => f.debug_tuple("Header").field(name).finish(),
            Self::Jwt { algorithm, kid, .. } => {
                f.debug_struct("Jwt").field("algorithm", algorithm).field("kid", kid).finish_non_exhaustive()
            }
        }
    }
}

impl LoadIdentity {
    /// The header (name, value) that proves `user`, if any.
    fn header(&self, user: &str) -> anyhow::Result<Option<(String, String)>> {
        Ok(match self {
            Self::Body => None,
            Self::Header(name) => Some((name.clone(), user.to_owned())),
            Self::Jwt { key, algorithm, kid, issuer, audience } => {
                let now = jiff::Timestamp::now().as_second();
                let claims = serde_json::json!({"sub": user, "iss": issuer, "aud": audience, "iat": now, "exp": now + 3600});
                let claims = match claims {
                    serde_json::Value::Object(map) => map.into_iter().filter(|(_, v)| !v.is_null()).collect::<serde_json::Map<_, _>>(),
                    _ => unreachable!("claims are an object"),
                };
                let mut header = jsonwebtoken::Header::new(*algorithm);
                header.kid = kid.clone();
                let token = jsonwebtoken::encode(&header, &claims, key)?;
                Some(("authorization".to_owned(), format!("Bearer {token}")))
            }
        })
    }
}

/// What came back.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Answers by HTTP status; 0 counts requests that got no HTTP answer.
    pub by_status: BTreeMap<u16, u64>,
    /// `(user, slot)` of every 201 answer, in arrival order.
    pub issued: Vec<(String, i64)>,
    pub elapsed: Duration,
    /// Latency in microseconds.
    pub latency_us: Option<Histogram<u64>>,
    /// Latency in microseconds by HTTP status (a 201 and a 410 take different paths).
    pub latency_by_status_us: BTreeMap<u16, Histogram<u64>>,
    /// The first request that got no HTTP answer, and why (refused, a certificate not
    /// trusted, a timeout): what a crowd that reached nothing has to say.
    pub first_failure: Option<String>,
}

impl LoadReport {
    /// Slots of the 201 answers, sorted.
    pub fn slots(&self) -> Vec<i64> {
        let mut slots: Vec<i64> = self.issued.iter().map(|(_, slot)| *slot).collect();
        slots.sort();
        slots
    }

    pub fn count(&self, status: u16) -> u64 {
        self.by_status.get(&status).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.by_status.values().sum()
    }

    pub fn server_errors(&self) -> u64 {
        self.by_status.iter().filter(|(s, _)| **s >= 500 || **s == 0).map(|(_, n)| n).sum()
    }

    pub fn throughput(&self) -> f64 {
        self.total() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn percentile_ms(&self, q: f64) -> f64 {
        self.latency_us.as_ref().map(|h| h.value_at_quantile(q) as f64 / 1000.0).unwrap_or(0.0)
    }

    pub fn p99_ms(&self) -> f64 {
        self.percentile_ms(0.99)
    }

    /// The `q` quantile of the answers with `status`, in milliseconds (NaN without any: no
    /// answer is not a fast one).
    pub fn percentile_ms_of(&self, status: u16, q: f64) -> f64 {
        self.latency_by_status_us.get(&status).map_or(f64::NAN, |h| h.value_at_quantile(q) as f64 / 1000.0)
    }

    /// A markdown table of answers, throughput and latency.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "| answer | count |\n|---|---:|");
        for (status, n) in &self.by_status {
            let label = crate::apply::ApplyOutcome::labels_for_status(*status);
            let name = if *status == 0 { label } else { format!("{status} {label}") };
            let _ = writeln!(out, "| {name} ({status}) | {n} |");
        }
        let _ = writeln!(out, "| total | {} |", self.total());
        let _ = writeln!(out, "\n| measure | value |\n|---|---:|");
        let _ = writeln!(out, "| elapsed | {:.3} s |", self.elapsed.as_secs_f64());
        let _ = writeln!(out, "| throughput | {:.0} req/s |", self.throughput());
        for (label, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)] {
            let _ = writeln!(out, "| latency {label} | {:.2} ms |", self.percentile_ms(q));
        }
        out
    }
}

/// Sends the plan's requests and collects the answers.
pub async fn run(plan: &LoadPlan) -> anyhow::Result<LoadReport> {
    let mut client = reqwest::Client::builder().pool_max_idle_per_host(plan.concurrency).timeout(Duration::from_secs(30)).tcp_nodelay(true);
    if let Some(path) = &plan.ca_file {
        let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("--ca-file {}: {e}", path.display()))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| anyhow::anyhow!("--ca-file {}: not PEM certificates: {e}", path.display()))?;
        anyhow::ensure!(!certificates.is_empty(), "--ca-file {}: no PEM certificate in it", path.display());
        for certificate in certificates {
            client = client.add_root_certificate(certificate);
        }
    }
    let client = client.build()?;
    let url = format!("{}/v1/events/{}/apply", plan.base_url.trim_end_matches('/'), plan.event);
    let bar = if plan.progress {
        let bar = indicatif::ProgressBar::new(plan.requests as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} {elapsed}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut report = LoadReport::default();
    let users = match (plan.same_user, plan.users) {
        (true, _) => 1,
        (false, Some(users)) => users.clamp(1, plan.requests.max(1)),
        (false, None) => plan.requests.max(1),
    };
    let user_of = |n: usize| format!("{}{}", plan.user_prefix, n % users);
    // Identities are made before the clock starts (one per user, as a client keeps its
    // token): the load measures the api, not the minting.
    let proofs: Vec<Option<(String, String)>> = match plan.identity {
        LoadIdentity::Body => Vec::new(),
        _ => (0..users.min(plan.requests)).map(|n| plan.identity.header(&user_of(n))).collect::<anyhow::Result<_>>()?,
    };
    let started = Instant::now();
    let ramp_step = plan.ramp.checked_div(plan.requests.max(1) as u32).unwrap_or_default();
    let mut answers = stream::iter(0..plan.requests)
        .map(|n| {
            let client = client.clone();
            let url = url.clone();
            let user = user_of(n);
            let proof = proofs.get(n % users).cloned().flatten();
            let start_at = tokio::time::Instant::from_std(started) + ramp_step * n as u32;
            async move {
                tokio::time::sleep_until(start_at).await;
                let sent = Instant::now();
                let request = match proof {
                    Some((name, value)) => client.post(&url).header(name, value).body(""),
                    None => client.post(&url).json(&serde_json::json!({ "userId": user })),
                };
                let result = request.send().await;
                let (status, slot, failure) = match result {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let body: serde_json::Value = response.json().await.unwrap_or_default();
                        (status, body.get("slot").and_then(serde_json::Value::as_i64), None)
                    }
                    // The whole chain: reqwest's own message says little ("error sending request").
                    Err(error) => (0, None, Some(error_chain(&error))),
                };
                (status, slot.map(|slot| (user, slot)), sent.elapsed(), failure)
            }
        })
        .buffer_unordered(plan.concurrency.max(1));
    while let Some((status, issued, latency, failure)) = answers.next().await {
        *report.by_status.entry(status).or_default() += 1;
        if report.first_failure.is_none() {
            report.first_failure = failure;
        }
        if let Some(issued) = issued {
            report.issued.push(issued);
        }
        let micros = (latency.as_micros() as u64).max(1);
        let _ = histogram.record(micros);
        let _ = report.latency_by_status_us.entry(status).or_insert_with(|| Histogram::new_from(&histogram)).record(micros);
        bar.inc(1);
    }
    bar.finish_and_clear();
    report.elapsed = started.elapsed();
    report.latency_us = Some(histogram);
    Ok(report)
}

/// An error and its sources, outermost first.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

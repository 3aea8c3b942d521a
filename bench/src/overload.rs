//! Overload answered, not absorbed: an api capped at `CAP` connections while `OPENED`
//! connections are opened against it that never send a byte (a crowd of slow clients, or an
//! attacker). Measured against the same api unloaded, in the same run: how many of the
//! connections beyond the cap are answered 503 at once, how long that answer takes against
//! the same storm of connections on a bare listener that writes the same answer on accept
//! (the machine's floor), and what holding them all costs in resident memory per connection
//! against the server's budget.
//!
//! The api runs in this process (as every part of the benchmark does), so the memory figure
//! also holds the client's side of the connections: an upper bound of the api's own.

use std::time::{Duration, Instant};

use coupon_service::app::{Api, ApiSettings};
use coupon_service::auth::AuthSettings;
use coupon_service::http::ServerLimits;
use futures::stream::{self, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::results::Measure;
use crate::setup::{burst, event, Setup};

const CAP: usize = 256;
const OPENED: usize = 3_000;
/// Applies at once in the warm-up burst: well within the cap.
const APPLY_CONCURRENCY: usize = 32;

/// The resident memory of this process, from `/proc`.
fn resident_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/self/status"))?;
    Ok(kib * 1024)
}

/// The 99th percentile of `values` (milliseconds).
fn p99(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() * 99 / 100).copied().unwrap_or(f64::NAN)
}

pub async fn measure(setup: &Setup, requests: usize) -> anyhow::Result<Vec<Measure>> {
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let settings = ApiSettings {
        namespace: "bench".into(),
        redis_url: setup.redis_url.clone(),
        kafka: setup.kafka.clone(),
        auth: AuthSettings::Open,
        server: ServerLimits { max_connections: CAP, ..ServerLimits::default() },
        ..ApiSettings::default()
    };
    let api = Api::start(settings, tokio::net::TcpListener::bind("127.0.0.1:0").await?, None, stop_rx)?;
    while !api.state.health.all_ready() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (url, addr) = (api.base_url(), api.local_addr);
    let (sale, _) = event(setup, requests as i64 * 2).await?;
    burst(&url, sale.name(), 200, APPLY_CONCURRENCY, "warm-").await?;
    // A first storm is slower whatever answers it (sockets and ports warm up): one is run
    // and thrown away before the two that are compared.
    let (bare, bare_task) = bare_refuser().await?;
    drop(storm(bare).await?);
    let (bare_opened, mut bare_ms) = storm(bare).await?;
    drop(bare_opened);
    bare_task.abort();
    let before = resident_bytes()?;
    let (opened, mut refusal_ms) = storm(addr).await?;
    let held = resident_bytes()?;
    let beyond = OPENED - CAP;
    let refused = refusal_ms.len();
    drop(opened);
    let _ = stop.send(true);
    let grown_kib = held.saturating_sub(before) as f64 / 1024.0 / OPENED as f64;

    Ok(vec![
        Measure::figure(
            "overload_refused_at_once_vs_beyond_cap",
            format!("connections beyond a cap of {CAP} answered 503 at once ({OPENED} idle opened)"),
            refused as f64,
            "connections",
            0,
            ">= 0.99",
        )
        .against(beyond as f64, "all beyond the cap"),
        Measure::figure("overload_refusal_p99_vs_bare_listener", "p99 of those 503 answers (ms)", p99(&mut refusal_ms), "ms", 1, "<= 1.5")
            .against(p99(&mut bare_ms), "bare listener answering on accept"),
        Measure::figure(
            "overload_memory_per_idle_connection_vs_budget",
            format!("resident memory per idle connection held (KiB; {OPENED} opened)"),
            grown_kib,
            "KiB",
            1,
            "<= 1.0",
        )
        .against(20.0, "the server's budget per connection"),
    ])
}

/// `OPENED` connections to `addr` that send nothing, 200 opened at a time, each waiting up to a
/// second for an answer: the connections (kept open) and how long each 503 took (ms).
async fn storm(addr: std::net::SocketAddr) -> anyhow::Result<(Vec<tokio::net::TcpStream>, Vec<f64>)> {
    let opened: Vec<(tokio::net::TcpStream, Option<(String, f64)>)> = stream::iter(0..OPENED)
        .map(|_| async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await?;
            let started = Instant::now();
            let mut answer = vec![0u8; 512];
            let read = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut answer)).await;
            let answered = read
                .ok()
                .and_then(Result::ok)
                .map(|n| (String::from_utf8_lossy(&answer[..n]).into_owned(), started.elapsed().as_secs_f64() * 1000.0));
            anyhow::Ok((stream, answered))
        })
        .buffer_unordered(200)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let refusal_ms = opened
        .iter()
        .filter_map(|(_, answer)| answer.as_ref().filter(|(text, _)| text.starts_with("HTTP/1.1 503")).map(|(_, ms)| *ms))
        .collect();
    Ok((opened.into_iter().map(|(stream, _)| stream).collect(), refusal_ms))
}

/// A listener that answers every connection with a 503 on accept, and keeps it open: the
/// least any server can do for a storm of connections on this machine.
async fn bare_refuser() -> anyhow::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.write_all(b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 0\r\n\r\n").await;
            held.push(stream);
        }
    });
    Ok((addr, task))
}

//! Overload answered, not absorbed: the real api binary with a cap of 100 connections, and
//! 3,000 connections opened against it that never send a byte (what a crowd of slow clients,
//! or an attacker, does). The api keeps answering at once, 503 with `Retry-After` beyond the
//! cap, its memory stays flat, and once the idle connections hit the header deadline applies
//! are served again.

use std::time::{Duration, Instant};

use coupon_tests::*;
use futures::stream::{self, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NAMESPACE: &str = "overload";
const CAP: usize = 100;
const OPENED: usize = 3_000;

/// The resident memory of a process, from `/proc`.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 =
        status.lines().find_map(|line| line.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").trim().parse().unwrap();
    kib * 1024
}

/// One apply on a fresh connection, written by hand so nothing is retried: the status line.
async fn apply_once(addr: &str, event: &str, user: &str) -> String {
    let body = format!(r#"{{"userId":"{user}"}}"#);
    let request = format!(
        "POST /v1/events/{event}/apply HTTP/1.1\r\nhost: api\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer)).await.expect("answered").unwrap();
    answer.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_beyond_the_cap_are_answered_at_once_and_cost_no_memory() {
    let brokers = kafka_brokers();
    let event = provision_event(&brokers, NAMESPACE, 10, 1).await;
    let addr = format!("127.0.0.1:{}", free_port());
    let max_connections = CAP.to_string();
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_coupon-service-under-test"));
    let api = ChildProcess::spawn(
        binary,
        &["api"],
        &[
            ("LISTEN_ADDR", &addr),
            ("COUPON_NAMESPACE", NAMESPACE),
            ("REDIS_URL", &redis_url()),
            ("KAFKA_BROKERS", &brokers),
            ("AUTH_MODE", "open"),
            ("OPS_ADDR", "127.0.0.1:0"),
            ("MAX_CONNECTIONS", &max_connections),
        ],
    );
    wait_for_status("api ready", &format!("http://{addr}/readyz"), 200, Duration::from_secs(30)).await;
    let pid = api.child.id().unwrap();
    assert!(apply_once(&addr, event.id.name(), "early").await.contains(" 201 "));
    let before = resident_bytes(pid);

    // 3,000 connections that send nothing, opened 200 at a time: the first 100 are held
    // open by the api until the header deadline; every other one is answered 503 at once.
    let opened: Vec<(tokio::net::TcpStream, Option<String>)> = stream::iter(0..OPENED)
        .map(|_| {
            let addr = addr.clone();
            async move {
                let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
                let mut answer = vec![0u8; 512];
                let read = tokio::time::timeout(Duration::from_millis(1_000), stream.read(&mut answer)).await;
                let answered = read.ok().and_then(Result::ok).map(|n| String::from_utf8_lossy(&answer[..n]).into_owned());
                (stream, answered)
            }
        })
        .buffer_unordered(200)
        .collect()
        .await;
    let refused = opened.iter().filter(|(_, answer)| answer.as_deref().is_some_and(|a| a.starts_with("HTTP/1.1 503"))).count();
    let with_retry_after = opened.iter().filter(|(_, answer)| answer.as_deref().is_some_and(|a| a.contains("retry-after: 1"))).count();
    let silent = opened.iter().filter(|(_, answer)| answer.is_none()).count();
    let closed = opened.iter().filter(|(_, answer)| answer.as_deref() == Some("")).count();
    assert!(refused >= OPENED - CAP, "{refused} of {OPENED} connections refused with a 503 ({silent} silent, {closed} closed)");
    assert_eq!(with_retry_after, refused, "every refusal says when to come back");
    let grown = resident_bytes(pid).saturating_sub(before);
    assert!(grown < 32 << 20, "the api grew by {} MiB for {OPENED} connections", grown >> 20);

    // While the held connections last, an apply is answered at once (503, come back later),
    // not left waiting.
    let started = Instant::now();
    let status = apply_once(&addr, event.id.name(), "during").await;
    assert!(status.contains(" 503 ") || status.contains(" 201 "), "{status}");
    assert!(started.elapsed() < Duration::from_secs(2), "answered at once: {:?}", started.elapsed());

    // The idle connections are cut at the header deadline (5 s); applies are served again.
    wait_until("applies served again", Duration::from_secs(20), || {
        let addr = addr.clone();
        let name = event.id.name().to_owned();
        async move { apply_once(&addr, &name, "after").await.contains(" 201 ").then_some(()) }
    })
    .await;
    drop(opened);
}

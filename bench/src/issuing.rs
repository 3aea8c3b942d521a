//! Issuing: the whole apply path (HTTP, gate, acknowledged produce) against `redis-benchmark`
//! running the gate script itself, unpipelined, against the same Redis.

use std::process::Command;
use std::time::Duration;

use coupon_core::provision;
use coupon_core::redis::{keyspace, RedisHandle};

use crate::results::Measure;
use crate::setup::{burst, event, Setup, Sizes, CONCURRENCY};

pub async fn measure(setup: &Setup, url: &str, sizes: &Sizes) -> anyhow::Result<Vec<Measure>> {
    let requests = sizes.requests;
    let (issuing, _) = event(setup, requests as i64 * 2).await?;
    burst(url, issuing.name(), 500, CONCURRENCY, "warm-").await?;
    let report = burst(url, issuing.name(), requests, CONCURRENCY, "issue-").await?;
    anyhow::ensure!(report.count(201) == requests as u64, "issuing run: {}", report.table());
    let baseline = redis_benchmark_gate(setup, requests, CONCURRENCY).await?;
    Ok(vec![Measure::figure("issuing_vs_redis_benchmark_evalsha", "issuing throughput (req/s)", report.throughput(), "req/s", 0, ">= 1.0")
        .against(baseline, "redis-benchmark EVALSHA gate script")])
}

/// `redis-benchmark` running the gate script itself (EVALSHA, random users) at `concurrency`.
async fn redis_benchmark_gate(setup: &Setup, requests: usize, concurrency: usize) -> anyhow::Result<f64> {
    let (id, _) = event(setup, i64::MAX / 2).await?;
    let mut conn = RedisHandle::connect_with_deadline(&setup.redis_url, Duration::from_secs(10)).await?;
    let evalsha_args = keyspace::prepare_gate_benchmark(&mut conn, &id).await?;
    let output = Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            "6379",
            "-q",
            "--csv",
            "-n",
            &requests.to_string(),
            "-c",
            &concurrency.to_string(),
            "-r",
            "1000000000",
        ])
        .arg("EVALSHA")
        .args(&evalsha_args)
        .output()?;
    anyhow::ensure!(output.status.success(), "redis-benchmark failed: {}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8_lossy(&output.stdout);
    // CSV: "test","rps",...
    let line =
        text.lines().find(|l| l.starts_with("\"EVALSHA")).ok_or_else(|| anyhow::anyhow!("unexpected redis-benchmark output: {text}"))?;
    let rps: f64 = line.split(',').nth(1).unwrap_or("0").trim_matches('"').parse()?;
    provision::delete_redis(&mut conn, &id).await?;
    Ok(rps)
}

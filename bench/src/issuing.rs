//! Issuing, layer by layer against the same Redis in the same run: the whole apply path
//! (HTTP, gate, acknowledged produce), our gate alone (its batched script calls, as the api
//! makes them, without HTTP or broker), and `redis-benchmark` running the gate script for one
//! user per call, unpipelined.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coupon_core::provision;
use coupon_core::redis::keyspace::{EventLayout, GateDecision};
use coupon_core::redis::{keyspace, RedisHandle};
use coupon_service::apply::gate_batches::GateBatches;
use futures::stream::{self, StreamExt};

use crate::results::Measure;
use crate::setup::{burst, event, median, Setup, Sizes, CONCURRENCY};

pub async fn measure(setup: &Setup, url: &str, sizes: &Sizes) -> anyhow::Result<Vec<Measure>> {
    let requests = sizes.requests;
    // Each side once per round, in a rotating order; the medians are compared.
    let mut rounds: [Vec<f64>; 3] = Default::default();
    for round in 0..sizes.rounds {
        for k in 0..3 {
            let side = (round + k) % 3;
            let figure = match side {
                0 => issuing_end_to_end(setup, url, requests).await?,
                1 => gate_alone(setup, requests).await?,
                _ => redis_benchmark_gate(setup, requests, CONCURRENCY).await?,
            };
            rounds[side].push(figure);
        }
    }
    let [issuing, gate, unpipelined] = rounds.map(|figures| median(&figures));
    let script = "redis-benchmark EVALSHA of the gate script, one user per call";
    Ok(vec![
        Measure::figure("issuing_vs_redis_benchmark_evalsha", "issuing throughput end to end (201/s)", issuing, "req/s", 0, "report")
            .against(unpipelined, script),
        Measure::figure("gate_vs_redis_benchmark_evalsha", "our gate alone, batched (claims/s)", gate, "claims/s", 0, ">= 3")
            .against(unpipelined, script),
        Measure::figure("issuing_vs_gate", "issuing throughput end to end (201/s, broker acknowledged)", issuing, "req/s", 0, ">= 0.5")
            .against(gate, "our gate alone, batched, no broker"),
    ])
}

/// 201s per second through the api (HTTP, gate, acknowledged produce), after a warm-up.
async fn issuing_end_to_end(setup: &Setup, url: &str, requests: usize) -> anyhow::Result<f64> {
    let (issuing, _) = event(setup, requests as i64 + 500).await?;
    burst(url, issuing.name(), 500, CONCURRENCY, "warm-").await?;
    let report = burst(url, issuing.name(), requests, CONCURRENCY, "issue-").await?;
    anyhow::ensure!(report.count(201) == requests as u64, "issuing run: {}", report.table());
    Ok(report.throughput())
}

/// Claims per second through the api's gate (`GateBatches`: calls of up to 32 users, a few
/// in flight per shard), `CONCURRENCY` applies waiting at a time, no HTTP and no broker.
async fn gate_alone(setup: &Setup, requests: usize) -> anyhow::Result<f64> {
    let (id, _) = event(setup, requests as i64 + 500).await?;
    let redis = RedisHandle::connect_in_background(&setup.redis_url)?;
    redis.wait().await;
    let gate = Arc::new(GateBatches::new(redis, Duration::from_secs(600)));
    let layout = Arc::new(EventLayout::single(&id));
    let claim = |n: usize| {
        let (gate, layout) = (gate.clone(), layout.clone());
        async move { matches!(gate.decide(&layout, &format!("gate-{n}")).await, Ok(GateDecision::Issued { .. })) }
    };
    // Warm: the writer started, the script loaded.
    stream::iter(0..500).map(claim).buffer_unordered(CONCURRENCY).count().await;
    let started = Instant::now();
    let issued = stream::iter(500..500 + requests)
        .map(claim)
        .buffer_unordered(CONCURRENCY)
        .filter(|issued| std::future::ready(*issued))
        .count()
        .await;
    let elapsed = started.elapsed();
    anyhow::ensure!(issued == requests, "gate alone: {issued} of {requests} issued");
    Ok(requests as f64 / elapsed.as_secs_f64())
}

/// `redis-benchmark` running the gate script itself (EVALSHA, random users) at `concurrency`.
async fn redis_benchmark_gate(setup: &Setup, requests: usize, concurrency: usize) -> anyhow::Result<f64> {
    let (id, _) = event(setup, i64::MAX / 2).await?;
    let mut conn = RedisHandle::connect_with_deadline(&setup.redis_url, Duration::from_secs(10)).await?;
    let evalsha_args = keyspace::prepare_gate_benchmark(&mut conn, &id).await?;
    let output = Command::new("redis-benchmark")
        .args([
            // The Redis the api and the gate alone use.
            "-u",
            &setup.redis_url,
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

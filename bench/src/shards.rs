//! One event sharded over K = 1, 2, 3 masters of the local Redis Cluster: end-to-end issuing
//! throughput, and the busiest master's script and CPU time per 10,000 coupons, each against
//! K = 1 in the same run; then the gate alone, driven at the masters' limit.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use coupon_core::redis::{diagnostics, keyspace, RedisHandle};

use crate::results::Measure;
use crate::setup::{api, burst, env, median, sharded_event, Setup, Sizes};

/// Microseconds each master of the cluster spent in scripts since its statistics were
/// reset (`reset`: reset them now).
async fn script_micros(masters: &[(String, u16)], reset: bool) -> anyhow::Result<Vec<u64>> {
    let mut micros = Vec::new();
    for (host, port) in masters {
        micros.push(diagnostics::script_micros(&format!("redis://{host}:{port}"), reset).await?);
    }
    Ok(micros)
}

/// CPU time (user and system, microseconds) each master has used since it started.
async fn cpu_micros(masters: &[(String, u16)]) -> anyhow::Result<Vec<u64>> {
    let mut micros = Vec::new();
    for (host, port) in masters {
        micros.push(diagnostics::cpu_micros(&format!("redis://{host}:{port}")).await?);
    }
    Ok(micros)
}

/// CPU time each master has used since `before` (from `cpu_micros`).
async fn cpu_micros_since(masters: &[(String, u16)], before: &[u64]) -> anyhow::Result<Vec<u64>> {
    Ok(cpu_micros(masters).await?.iter().zip(before).map(|(after, before)| after - before).collect())
}

/// One run of the shard benchmark.
#[derive(Debug)]
struct ShardRun {
    throughput: f64,
    /// Busiest master's script time per 10,000 coupons (µs).
    busiest_script: f64,
    /// Busiest master's CPU time per 10,000 coupons (µs).
    busiest_cpu: f64,
    /// Every master's script time per 10,000 coupons.
    masters: String,
    grants: u64,
}

pub async fn measure(setup: &Setup, sizes: &Sizes) -> anyhow::Result<Vec<Measure>> {
    let mut measures = Vec::new();
    let cluster = Setup { redis_url: env("REDIS_CLUSTER_URL", "redis://127.0.0.1:7000"), ..setup.clone() };
    let (cluster_api, cluster_state) = api(&cluster).await?;
    let mut conn = RedisHandle::connect_with_deadline(&cluster.redis_url, Duration::from_secs(10)).await?;
    let masters = diagnostics::masters(&mut conn).await.unwrap_or_default();
    anyhow::ensure!(masters.len() >= 3, "the shard benchmark needs a cluster of three masters (dev/stack up cluster)");
    let requests = sizes.shard_requests;
    // Enough in flight that each master of three still serves several commands per wake
    // of its event loop, as a master does at a flash crowd's peak: with few in flight the
    // fixed cost per wake is shared by fewer commands once the event is split.
    let in_flight: usize = env("BENCH_SHARD_CONCURRENCY", "256").parse()?;
    // The figures of one run of one K move by ±15 % from run to run on a shared machine:
    // each K runs `rounds` times, interleaved (1, 2, 3, 1, 2, 3, ...), and the table
    // gives each figure's median, the ratios taken between medians.
    let rounds = sizes.rounds;
    let mut measured: BTreeMap<u16, Vec<ShardRun>> = BTreeMap::new();
    for round in 0..rounds {
        for shards in [1u16, 2, 3] {
            let warm = sharded_event(&cluster, 1000, shards).await?;
            burst(&cluster_api, warm.name(), 500, in_flight, "warm-").await?;
            let id = sharded_event(&cluster, requests as i64, shards).await?;
            script_micros(&masters, true).await?;
            let grants_before = cluster_state.metrics.stock_grants.get();
            let cpu_before = cpu_micros(&masters).await?;
            let report = burst(&cluster_api, id.name(), requests, in_flight, "shard-").await?;
            let grants = cluster_state.metrics.stock_grants.get() - grants_before;
            let cpu = cpu_micros_since(&masters, &cpu_before).await?;
            anyhow::ensure!(report.count(201) == requests as u64, "{shards} shards: {}", report.table());
            let micros = script_micros(&masters, false).await?;
            let per_10k = |micros: u64| micros as f64 * 10_000.0 / requests as f64;
            let run = ShardRun {
                throughput: report.throughput(),
                busiest_script: per_10k(*micros.iter().max().unwrap_or(&0)),
                busiest_cpu: per_10k(*cpu.iter().max().unwrap_or(&0)),
                masters: micros.iter().map(|m| format!("{:.0}", per_10k(*m))).collect::<Vec<_>>().join(" / "),
                grants,
            };
            eprintln!("shards round {round}: K={shards} {run:?}");
            measured.entry(shards).or_default().push(run);
        }
    }
    let figures = |shards: u16, figure: fn(&ShardRun) -> f64| median(&measured[&shards].iter().map(figure).collect::<Vec<_>>());
    let (base_throughput, base_script, base_cpu) =
        (figures(1, |r| r.throughput), figures(1, |r| r.busiest_script), figures(1, |r| r.busiest_cpu));
    for shards in [1u16, 2, 3] {
        let (throughput, script, cpu) =
            (figures(shards, |r| r.throughput), figures(shards, |r| r.busiest_script), figures(shards, |r| r.busiest_cpu));
        // The round whose busiest master is the median one, for the spread over masters.
        let runs = &measured[&shards];
        let typical = runs.iter().min_by(|a, b| (a.busiest_script - script).abs().total_cmp(&(b.busiest_script - script).abs()));
        let spread = typical.map_or(String::new(), |r| r.masters.clone());
        let grants: u64 = runs.iter().map(|r| r.grants).sum::<u64>() / runs.len() as u64;
        let script_ratios: Vec<String> = runs.iter().map(|r| format!("{:.2}", r.busiest_script / base_script)).collect();
        let what = format!("{shards} shard(s): issuing throughput end to end (req/s, median of {rounds})");
        measures.push(
            Measure::figure(&format!("scaleout_issuing_k{shards}_vs_k1"), what, throughput, "req/s", 0, "report")
                .against(base_throughput, "1 shard, same cluster"),
        );
        let what = format!(
            "{shards} shard(s): busiest master's script time per 10,000 coupons (µs, median of {rounds}; masters {spread}; each round against the median: {})",
            script_ratios.join(", ")
        );
        measures.push(
            Measure::figure(&format!("scaleout_busiest_master_script_k{shards}_vs_k1"), what, script, "µs per 10,000 coupons", 0, "report")
                .against(base_script, "1 shard, same cluster"),
        );
        let what = format!(
            "{shards} shard(s): busiest master's CPU time per 10,000 coupons (µs, INFO cpu, median; {grants} stock grants a round)"
        );
        let target = if shards == 3 { "<= 0.4" } else { "report" };
        measures.push(
            Measure::figure(&format!("scaleout_busiest_master_cpu_k{shards}_vs_k1"), what, cpu, "µs per 10,000 coupons", 0, target)
                .against(base_cpu, "1 shard, same cluster"),
        );
    }
    // The gate alone, driven at the masters' limit: every call carries a full batch of
    // 32 users, at any K, as at a crowd's peak on masters that saturate. Shows what the
    // end-to-end run above cannot on this machine (its masters never saturate, so their
    // batches shrink with K).
    let users = sizes.gate_users;
    let mut busiest: BTreeMap<u16, Vec<f64>> = BTreeMap::new();
    let mut busiest_cpu: BTreeMap<u16, Vec<f64>> = BTreeMap::new();
    for _ in 0..rounds {
        for shards in [1u16, 3] {
            // Room for every user on any shard: no shard runs out, no stock moves.
            let id = sharded_event(&cluster, (users * 2) as i64, shards).await?;
            let layout = Arc::new(keyspace::EventLayout::new(&id, shards));
            let mut batches: Vec<(u16, Vec<String>)> = Vec::new();
            let mut by_shard: BTreeMap<u16, Vec<String>> = BTreeMap::new();
            for i in 0..users {
                let user = format!("gate-{i}");
                let list = by_shard.entry(layout.home_shard(&user)).or_default();
                list.push(user);
                if list.len() == 32 {
                    let shard = layout.home_shard(&list[0]);
                    batches.push((shard, std::mem::take(list)));
                }
            }
            batches.extend(by_shard.into_iter().filter(|(_, list)| !list.is_empty()));
            let queue = Arc::new(std::sync::Mutex::new(batches));
            script_micros(&masters, true).await?;
            let cpu_before = cpu_micros(&masters).await?;
            let workers: Vec<_> = (0..48)
                .map(|_| {
                    let (queue, layout, mut conn) = (queue.clone(), layout.clone(), conn.clone());
                    tokio::spawn(async move {
                        let mut issued = 0usize;
                        loop {
                            let Some((shard, batch)) = queue.lock().unwrap().pop() else { return Ok::<usize, anyhow::Error>(issued) };
                            let names: Vec<&str> = batch.iter().map(String::as_str).collect();
                            let call = keyspace::unique_id();
                            let (decisions, _) =
                                keyspace::apply_many(&mut conn, &layout, shard, &names, Duration::from_secs(30), None, &call).await?;
                            issued += decisions.iter().filter(|d| matches!(d, keyspace::GateDecision::Issued { .. })).count();
                        }
                    })
                })
                .collect();
            let mut issued = 0;
            for worker in workers {
                issued += worker.await??;
            }
            anyhow::ensure!(issued == users, "{shards} shards: {issued} of {users} issued");
            let cpu = cpu_micros_since(&masters, &cpu_before).await?.into_iter().max().unwrap_or(0);
            let micros = script_micros(&masters, false).await?;
            busiest.entry(shards).or_default().push(*micros.iter().max().unwrap_or(&0) as f64 * 10_000.0 / users as f64);
            busiest_cpu.entry(shards).or_default().push(cpu as f64 * 10_000.0 / users as f64);
        }
    }
    let (one, three) = (median(&busiest[&1]), median(&busiest[&3]));
    let rounds_text = busiest[&3].iter().map(|v| format!("{:.2}", v / one)).collect::<Vec<_>>().join(", ");
    let what = format!(
        "gate alone at the masters' limit, calls of 32 users: busiest master's script time per 10,000 coupons at K = 3 (µs, median of {rounds}; rounds {rounds_text})"
    );
    measures.push(
        Measure::figure("gate_alone_busiest_master_script_k3_vs_k1", what, three, "µs per 10,000 coupons", 0, "report")
            .against(one, "K = 1, same cluster"),
    );
    let (one, three) = (median(&busiest_cpu[&1]), median(&busiest_cpu[&3]));
    let what = format!(
        "gate alone at the masters' limit: busiest master's CPU time per 10,000 coupons at K = 3 (µs, INFO cpu, median of {rounds})"
    );
    measures.push(
        Measure::figure("gate_alone_busiest_master_cpu_k3_vs_k1", what, three, "µs per 10,000 coupons", 0, "report")
            .against(one, "K = 1, same cluster"),
    );
    Ok(measures)
}

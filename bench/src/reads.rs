//! What reads cost the Redis master that decides a sale: commands per stats request and per
//! request naming an unknown event, counted by the server against one uncached read of the
//! same event in the same run; and the apply p99 with a stats flood beside it against the
//! same burst beside a flood of as many `/healthz` requests (what any request costs the api).

use coupon_core::event::EventId;
use coupon_core::redis::{diagnostics, keyspace, RedisHandle};
use futures::stream::{self, StreamExt};
use std::time::Duration;

use crate::results::Measure;
use crate::setup::{burst, event, unique, Setup, CONCURRENCY};

/// `requests` GETs of `url`, `CONCURRENCY` at a time: how many were answered `expected`.
async fn flood(client: &reqwest::Client, url: &str, requests: usize, expected: u16) -> usize {
    stream::iter(0..requests)
        .map(|_| async move { client.get(url).send().await.map(|r| r.status().as_u16()).unwrap_or(0) })
        .buffer_unordered(CONCURRENCY)
        .filter(|status| std::future::ready(*status == expected))
        .count()
        .await
}

/// Redis commands one uncached read of `event`'s stats runs: the baseline.
async fn one_read(setup: &Setup, event: &EventId) -> anyhow::Result<u64> {
    let mut conn = RedisHandle::connect_with_deadline(&setup.redis_url, Duration::from_secs(10)).await?;
    let before = diagnostics::commands_run(&setup.redis_url).await?;
    keyspace::counters(&mut conn, event).await?;
    Ok(diagnostics::commands_run(&setup.redis_url).await? - before)
}

pub async fn measure(setup: &Setup, url: &str, requests: usize) -> anyhow::Result<Vec<Measure>> {
    let (sale, _) = event(setup, requests as i64 * 4).await?;
    let client = reqwest::Client::new();
    let stats_url = format!("{url}/v1/events/{}", sale.name());
    let unknown_url = format!("{url}/v1/events/{}", unique("made-up"));
    let baseline = one_read(setup, &sale).await? as f64;
    let mut lines = Vec::new();
    for (what, name, url, expected) in [("stats", "stats", &stats_url, 200), ("unknown event", "unknown_event", &unknown_url, 404)] {
        flood(&client, url, 1, expected).await;
        let before = diagnostics::commands_run(&setup.redis_url).await?;
        let answered = flood(&client, url, requests, expected).await;
        anyhow::ensure!(answered == requests, "{what}: {answered} of {requests} answered {expected}");
        let per_request = (diagnostics::commands_run(&setup.redis_url).await? - before) as f64 / requests as f64;
        let measure = format!("redis_commands_per_{name}_request_vs_one_read");
        let what = format!("Redis commands per {what} request");
        lines.push(Measure::figure(&measure, what, per_request, "commands", 4, "< 0.01 commands").against(baseline, "one uncached read"));
    }
    // The flood costs the api's HTTP handling whatever it asks (client, api and Redis share
    // the machine's cores): the baseline is the same burst beside a flood of the same size of
    // the cheapest request there is, so the ratio is what stats add.
    let applies = requests / 4;
    let health_url = format!("{url}/healthz");
    // Thrown away: a first flood finds the machine colder than the ones compared.
    flood(&client, &health_url, requests, 200).await;
    let (beside_http, _) =
        tokio::join!(burst(url, sale.name(), applies, CONCURRENCY, "beside-http-"), flood(&client, &health_url, requests, 200));
    let beside_http = beside_http?.p99_ms();
    let (beside, _) = tokio::join!(burst(url, sale.name(), applies, CONCURRENCY, "beside-"), flood(&client, &stats_url, requests, 200));
    let beside = beside?.p99_ms();
    let alone = burst(url, sale.name(), applies, CONCURRENCY, "alone-").await?.p99_ms();
    let what = format!("apply p99 beside a stats flood (ms; alone: {alone:.1})");
    lines.push(
        Measure::figure("apply_p99_beside_stats_vs_beside_healthz", what, beside, "ms", 1, "<= 1.2")
            .against(beside_http, "beside as many /healthz"),
    );
    Ok(lines)
}

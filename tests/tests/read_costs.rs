//! What reads cost the Redis master that decides a sale. A shop front end polling "coupons
//! left", or a client making up event names, must not compete with the sale: the api serves
//! the stats from its memory, read at most once a second per event, and remembers a name
//! Redis does not know for a few seconds. Counted with the server's own `INFO commandstats`
//! on a Redis of the test's own, so no other test's commands are counted.

use std::time::Duration;

use coupon_core::redis::diagnostics;
use coupon_service::app::ApiSettings;
use coupon_tests::*;
use futures::stream::{self, StreamExt};

const NAMESPACE: &str = "reads";

/// Every command the server ran so far, but `INFO` itself.
async fn commands_run(redis_url: &str) -> u64 {
    diagnostics::commands_run(redis_url).await.unwrap()
}

/// `requests` GETs of `url(n)`, 64 at a time; their statuses.
async fn flood(client: &reqwest::Client, url: impl Fn(usize) -> String, requests: usize) -> Vec<u16> {
    stream::iter(0..requests)
        .map(|n| {
            let url = url(n);
            async move { client.get(&url).send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
        })
        .buffer_unordered(64)
        .collect()
        .await
}

/// 3,000 stats requests for an event and 3,000 for names nobody provisioned (a different one
/// each time), at once: after the first of each, Redis runs fewer than 0.01 commands per
/// request (the api's readiness probe included). The stats still follow the sale: a coupon
/// issued shows within seconds, and again after more refreshes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stats_and_unknown_names_cost_the_master_almost_nothing_per_request() {
    const REQUESTS: usize = 3_000;
    let own = OwnRedis::start().await;
    let brokers = kafka_brokers();
    let event = provision_event_on(&own.url(), &brokers, NAMESPACE, 10, 1).await;
    let api = InProcessApi::start_ready(ApiSettings {
        namespace: NAMESPACE.into(),
        redis_url: own.url(),
        kafka: kafka(&brokers),
        ..ApiSettings::default()
    })
    .await;
    let client = reqwest::Client::new();
    let stats_url = format!("{}/v1/events/{}", api.base_url, event.id.name());
    let made_up = unique("made-up");
    let unknown_url = |n: usize| format!("{}/v1/events/{made_up}-{n}", api.base_url);
    assert_eq!(flood(&client, |_| stats_url.clone(), 1).await, [200]);
    assert_eq!(flood(&client, &unknown_url, 1).await, [404]);

    let before = commands_run(&own.url()).await;
    let (stats, unknown) = tokio::join!(flood(&client, |_| stats_url.clone(), REQUESTS), flood(&client, &unknown_url, REQUESTS));
    let spent = commands_run(&own.url()).await - before;
    assert!(stats.iter().all(|status| *status == 200), "{:?}", stats.iter().find(|status| **status != 200));
    assert!(unknown.iter().all(|status| *status == 404), "{:?}", unknown.iter().find(|status| **status != 404));
    let per_request = spent as f64 / (2 * REQUESTS) as f64;
    assert!(per_request < 0.01, "{spent} Redis commands for {} requests: {per_request:.4} each", 2 * REQUESTS);

    // Refresh after refresh, the stats follow the sale (an entry refreshed once was served for
    // ever).
    for buyer in 1..=3 {
        let (status, body) = apply(&client, &api.apply_url(&event.id), &format!("buyer-{buyer}")).await;
        assert_eq!(status, 201, "{body}");
        wait_until("the stats show the coupon", Duration::from_secs(10), || async {
            let stats: serde_json::Value = client.get(&stats_url).send().await.ok()?.json().await.ok()?;
            (stats["issued"] == buyer && stats["remaining"] == 10 - buyer).then_some(())
        })
        .await;
    }
}

//! Sold out: answered from the in-process flag, against a bare axum handler answering the
//! same body through the same server loop.

use crate::results::Measure;
use crate::setup::{burst, event, serve, Setup, Sizes, CONCURRENCY};

pub async fn measure(setup: &Setup, url: &str, sizes: &Sizes) -> anyhow::Result<Vec<Measure>> {
    let requests = sizes.requests;
    let (sold, _) = event(setup, 1).await?;
    burst(url, sold.name(), 10, 1, "first-").await?;
    let report = burst(url, sold.name(), requests, CONCURRENCY, "late-").await?;
    anyhow::ensure!(report.count(410) == requests as u64, "sold-out run: {}", report.table());
    let bare = serve(axum::Router::new().route(
        "/v1/events/{event}/apply",
        axum::routing::post(|| async { (axum::http::StatusCode::GONE, axum::Json(serde_json::json!({"status": "sold_out"}))) }),
    ))
    .await?;
    let baseline = burst(&bare, "x", requests, CONCURRENCY, "bare-").await?.throughput();
    Ok(vec![Measure::figure("soldout_vs_bare_axum", "sold-out throughput (req/s)", report.throughput(), "req/s", 0, ">= 0.9")
        .against(baseline, "bare axum handler")])
}

//! HTTP under connection churn: flash-sale clients reconnect (mobile networks, browsers that
//! give up on a slow page), so each client here opens a connection, sends
//! `REQUESTS_PER_CONNECTION` applies on it one after another, closes it and opens the next.
//! Sold-out answers of our api against a bare axum handler under the same churn, in the same
//! run: what accepting and setting up connections costs us beyond the floor.

use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::results::Measure;
use crate::setup::{burst, event, serve, Setup, Sizes, CONCURRENCY};

/// Requests each connection carries before the client closes it.
const REQUESTS_PER_CONNECTION: usize = 25;

pub async fn measure(setup: &Setup, url: &str, sizes: &Sizes) -> anyhow::Result<Vec<Measure>> {
    let (sold, _) = event(setup, 1).await?;
    burst(url, sold.name(), 10, 1, "first-").await?;
    let bare = serve(axum::Router::new().route(
        "/v1/events/{event}/apply",
        axum::routing::post(|| async { (axum::http::StatusCode::GONE, axum::Json(serde_json::json!({"status": "sold_out"}))) }),
    ))
    .await?;
    let requests = sizes.requests;
    // A first storm of connections is slower whatever answers it: one round of each side is
    // thrown away. Then the sides alternate, the first of each round in turn, so that drift
    // of the machine hits both alike.
    churn(url, sold.name(), requests / 4 + 1).await?;
    churn(&bare, "x", requests / 4 + 1).await?;
    let (mut ours, mut baseline) = (Vec::new(), Vec::new());
    for round in 0..sizes.rounds {
        if round % 2 == 0 {
            ours.push(churn(url, sold.name(), requests).await?);
            baseline.push(churn(&bare, "x", requests).await?);
        } else {
            baseline.push(churn(&bare, "x", requests).await?);
            ours.push(churn(url, sold.name(), requests).await?);
        }
    }
    let (ours, baseline) = (crate::setup::median(&ours), crate::setup::median(&baseline));
    let what = format!("sold-out req/s, clients reconnecting every {REQUESTS_PER_CONNECTION} requests");
    Ok(vec![Measure::figure("soldout_churn_vs_bare_axum_churn", what, ours, "req/s", 0, ">= 0.9")
        .against(baseline, "bare axum handler, same churn")])
}

/// Answers per second to `requests` applies for sold-out `event` at `base`, `CONCURRENCY`
/// clients at a time, each on connections of `REQUESTS_PER_CONNECTION` requests; every answer
/// must be 410.
async fn churn(base: &str, event: &str, requests: usize) -> anyhow::Result<f64> {
    let address = base.trim_start_matches("http://").to_owned();
    let path = format!("/v1/events/{event}/apply");
    let connections = requests.div_ceil(REQUESTS_PER_CONNECTION);
    let started = Instant::now();
    let answered: Vec<anyhow::Result<usize>> = stream::iter(0..connections)
        .map(|connection| {
            let (address, path) = (address.clone(), path.clone());
            let count = REQUESTS_PER_CONNECTION.min(requests - connection * REQUESTS_PER_CONNECTION);
            async move { one_connection(&address, &path, connection, count).await }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let mut gone = 0;
    for answers in answered {
        gone += answers?;
    }
    anyhow::ensure!(gone == requests, "{gone} of {requests} answered 410 under churn at {base}");
    Ok(requests as f64 / elapsed.max(Duration::from_nanos(1)).as_secs_f64())
}

/// Opens a connection, sends `count` applies on it one after another, closes it: how many
/// were answered 410.
async fn one_connection(address: &str, path: &str, connection: usize, count: usize) -> anyhow::Result<usize> {
    let stream = tokio::net::TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let (mut sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(driver);
    let mut gone = 0;
    for n in 0..count {
        let body = format!(r#"{{"userId":"churn-{connection}-{n}"}}"#);
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(http::header::HOST, address)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        // The previous answer is read; the connection takes the next request once its
        // driver has seen that.
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        gone += usize::from(status == http::StatusCode::GONE);
    }
    drop(sender);
    let _ = driver.await;
    Ok(gone)
}

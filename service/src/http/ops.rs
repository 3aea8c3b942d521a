//! `/healthz`, `/readyz` and `/metrics`: merged into the api's routes, served alone by the
//! consumer.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::health::Health;
use crate::metrics::Metrics;

pub fn router(health: Health, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|State((_, metrics)): State<(Health, Arc<Metrics>)>| async move {
                ([("content-type", coupon_core::telemetry::OPENMETRICS_CONTENT_TYPE)], metrics.encode())
            }),
        )
        .with_state((health, metrics))
}

async fn readyz(State((health, _)): State<(Health, Arc<Metrics>)>) -> Response {
    let code = if health.all_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(serde_json::json!({"ready": health.all_ready(), "components": health.snapshot()}))).into_response()
}

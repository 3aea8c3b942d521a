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

/// What `/readyz` answers 200 for. Either way its body lists every dependency's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Every dependency reachable: the consumer, which takes no traffic, so readiness only
    /// tells rollouts and people whether it can work.
    AllDependencies,
    /// The process answers HTTP, and has reached each dependency once since it started: the
    /// api. Once up, Redis or Kafka going out of reach leaves it ready: it answers every
    /// request itself (503 JSON, 403/410 from memory), which users are better served by than
    /// by a Service without endpoints, and a short blip of one dependency would otherwise
    /// take every replica out of the endpoints at once. Until each was reached once it is not
    /// ready, so a rollout with a wrong address or credentials stops at its first pod, and a
    /// new pod joins the endpoints only when it can issue. Only the stop signal turns it off.
    Serving,
}

pub fn router(health: Health, metrics: Arc<Metrics>, readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|State((_, metrics, _)): State<(Health, Arc<Metrics>, Readiness)>| async move {
                ([("content-type", coupon_core::telemetry::OPENMETRICS_CONTENT_TYPE)], metrics.encode())
            }),
        )
        .with_state((health, metrics, readiness))
}

async fn readyz(State((health, _, readiness)): State<(Health, Arc<Metrics>, Readiness)>) -> Response {
    // The answer is derived from the states it reports, read once: a probe flipping in
    // between never yields a body that contradicts the status. (A component is marked
    // reached before it is marked ready, so one reported ready has been reached.)
    let components = health.snapshot();
    let ready = match readiness {
        Readiness::AllDependencies => components.values().all(|ready| *ready),
        Readiness::Serving => components.get("serving").copied().unwrap_or(false) && health.all_reached_once_except("serving"),
    };
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(serde_json::json!({"ready": ready, "components": components}))).into_response()
}

//! `/healthz`, `/readyz` and `/metrics`: the consumer's only routes; the api serves them on
//! its ops listener, and the probes on its public one too.

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

/// `/healthz`, `/readyz` and `/metrics`.
pub fn router(health: Health, metrics: Arc<Metrics>, readiness: Readiness) -> Router {
    probes(health, readiness).merge(Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move { ([("content-type", coupon_core::telemetry::OPENMETRICS_CONTENT_TYPE)], metrics.encode()) }
        }),
    ))
}

/// `/healthz` and `/readyz` alone: what the api's public listener serves besides its routes,
/// for the kubelet's probes.
pub fn probes(health: Health, readiness: Readiness) -> Router {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).with_state((health, readiness))
}

#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "probes", responses((status = 200, body = String, content_type = "text/plain", description = "Alive")))]
pub(super) async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "probes",
    responses(
        (status = 200, body = super::bodies::ReadinessBody,
            description = "Ready: the api answers HTTP (with Redis or Kafka out of reach it answers 503 JSON itself); `components` says what it can reach"),
        (status = 503, body = super::bodies::ReadinessBody, description = "Not ready: starting, or stopping after the stop signal"),
    )
)]
pub(super) async fn readyz(State((health, readiness)): State<(Health, Readiness)>) -> Response {
    // The answer is derived from the states it reports, read once: a probe flipping in
    // between never yields a body that contradicts the status. (A component is marked
    // reached before it is marked ready, so one reported ready has been reached.)
    let components = health.snapshot();
    let ready = match readiness {
        Readiness::AllDependencies => components.values().all(|ready| *ready),
        Readiness::Serving => components.get("serving").copied().unwrap_or(false) && health.all_reached_once_except("serving"),
    };
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let components = components.into_iter().map(|(name, ready)| (name.to_owned(), ready)).collect();
    (code, Json(super::bodies::ReadinessBody { ready, components })).into_response()
}

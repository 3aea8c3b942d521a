//! The api's HTTP face: routes, the mapping of `ApplyOutcome` to responses, the event stats,
//! the server loop with its limits, and the health and metrics endpoints.

mod api_doc;
pub mod bodies;
mod ops;
mod server;
mod stats;
mod stats_cache;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use coupon_core::redis::RedisHandle;

pub use ops::{router as ops_router, Readiness};
pub use server::{serve, ServerLimits, Shedding};
pub use stats_cache::StatsCache;

use crate::apply::{ApplyOutcome, ApplyService, IdempotencyKey, LookupOutcome};
use crate::auth::{Authenticator, Identity, Rejection};
use crate::health::Health;
use crate::metrics::Metrics;

pub use api_doc::document as openapi_document;

/// Largest apply body accepted; a user id of 128 characters needs far less.
pub const MAX_BODY_BYTES: usize = 1024;

/// What the handlers share.
pub struct ApiState {
    pub apply: Arc<ApplyService>,
    /// For the event stats.
    pub redis: RedisHandle,
    /// Who the user is (`AUTH_MODE`).
    pub auth: Authenticator,
    pub health: Health,
    pub metrics: Arc<Metrics>,
    /// The event stats as last read (at most once a second per event).
    pub stats: StatsCache,
}

/// Routes of the api's public listener: the user routes and the probes. Nothing that tells
/// an outsider more than the user routes do (`/metrics`, `/openapi.json`: `ops_routes`).
pub fn router(state: Arc<ApiState>) -> Router {
    let probes = ops::probes(state.health.clone(), Readiness::Serving);
    Router::new()
        .route("/v1/events/{event}/apply", post(apply))
        .route("/v1/events/{event}", get(stats::event_stats))
        .route("/v1/events/{event}/users/{user}", get(user_coupon))
        // Paths that match no route (an event name with a '/', say) name no known event.
        .fallback(|| async { ApplyOutcome::UnknownEvent })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
        .merge(probes)
}

/// Routes of the api's ops listener (`OPS_ADDR`, its own port, in no public Service): the
/// probes, `/metrics` and `/openapi.json`.
pub fn ops_routes(state: &ApiState) -> Router {
    ops::router(state.health.clone(), state.metrics.clone(), Readiness::Serving)
        .route("/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], openapi_document()) }))
}

impl IntoResponse for ApplyOutcome {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, [(header::CONTENT_TYPE, "application/json")], self.body()).into_response();
        if let Self::Replayed { .. } = self {
            response.headers_mut().insert("idempotent-replayed", axum::http::HeaderValue::from_static("true"));
        }
        response
    }
}

/// A 401 with its `WWW-Authenticate` challenge; or, while the keys that may verify the
/// credentials are being fetched, a 503 with `Retry-After`.
fn unauthorized(rejection: &Rejection) -> Response {
    if rejection.retry_later() {
        let mut response = ApplyOutcome::Unavailable.into_response();
        response.headers_mut().insert(header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        return response;
    }
    let mut response = ApplyOutcome::Unauthorized.into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, rejection.challenge());
    response
}

/// Ask for a coupon of the event
#[utoipa::path(
    post,
    path = "/v1/events/{event}/apply",
    operation_id = "apply",
    tag = "events",
    params(
        ("event" = String, Path, description = "Event name in the api's namespace"),
        ("Idempotency-Key" = Option<String>, Header, max_length = 512, description = "A key the client makes for this apply (draft-ietf-httpapi-idempotency-key-header): \
            a retry with the same key and the same body is answered what the first request was answered, with `Idempotent-Replayed: true`. \
            A quoted string (`\"...\"`, RFC 8941) or the bare characters (printable ASCII without spaces, quotes, backslashes or commas), \
            1 to 255 characters. Scoped to the event and the user; the 16 latest per user are kept until a day after the window. \
            5xx answers are not kept. Malformed: 400."),
    ),
    request_body(
        content = bodies::ApplyRequest,
        description = "`open` mode: the user applying. With a proven identity the body may be empty, or name the same user."
    ),
    responses(
        (status = 201, body = bodies::IssuedBody, headers(("Idempotent-Replayed" = String, description = "`true` when this is the kept answer of an earlier request with the same Idempotency-Key")),
            description = "Issued, and the broker has the record. A user whose earlier apply was issued but never delivered gets the same slot again"),
        (status = 400, response = api_doc::MalformedRequest),
        (status = 401, response = api_doc::Unauthorized),
        (status = 403, body = bodies::StatusBody, headers(("Idempotent-Replayed" = String, description = "`true` when this is the kept answer of an earlier request with the same Idempotency-Key")),
            description = "Not open yet, closed, or paused by the shop"),
        (status = 404, response = api_doc::UnknownEvent),
        (status = 408, description = "Request took too long"),
        (status = 409, body = bodies::ConflictBody, headers(("Idempotent-Replayed" = String, description = "`true` when this is the kept answer of an earlier request with the same Idempotency-Key")),
            description = "The user already holds a coupon (or another request of theirs is delivering it): its slot. \
                Or (`in_flight`) the request's Idempotency-Key is still in use by its first request"),
        (status = 410, body = bodies::StatusBody, headers(("Idempotent-Replayed" = String, description = "`true` when this is the kept answer of an earlier request with the same Idempotency-Key")), description = "Sold out"),
        (status = 413, response = api_doc::MalformedRequest),
        (status = 422, body = bodies::StatusBody, description = "The request's Idempotency-Key was used before with another body"),
        (status = 503, response = api_doc::Unavailable),
    ),
    security(("bearerToken" = []), ("gatewayHeader" = []), ())
)]
async fn apply(
    State(state): State<Arc<ApiState>>,
    event: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let (outcome, rejection) = match decide(&state, event, &headers, body).await {
        Ok(outcome) => (outcome, None),
        Err(rejection) if rejection.retry_later() => (ApplyOutcome::Unavailable, Some(rejection)),
        Err(rejection) => (ApplyOutcome::Unauthorized, Some(rejection)),
    };
    state.metrics.answer(outcome.label());
    state.metrics.apply_seconds.observe(started.elapsed().as_secs_f64());
    match rejection {
        Some(rejection) => unauthorized(&rejection),
        None => outcome.into_response(),
    }
}

/// Checks the request in the documented order (path, identity, body size, JSON), then asks
/// the apply service.
async fn decide(
    state: &Arc<ApiState>,
    event: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<ApplyOutcome, Rejection> {
    let Path(name) = match event {
        Ok(path) => path,
        Err(rejection) => return Ok(ApplyOutcome::bad_request(rejection.body_text())),
    };
    let event = match state.apply.event_id(&name) {
        Ok(event) => event,
        Err(outcome) => return Ok(outcome),
    };
    let identity = state.auth.identify(headers).await?;
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return Ok(ApplyOutcome::BadRequest { status: rejection.status().as_u16(), error: rejection.body_text() }),
    };
    let named = match (&identity, body.iter().all(u8::is_ascii_whitespace)) {
        // With a proven identity the body may be empty.
        (Identity::Proven(_), true) => None,
        _ => match serde_json::from_slice::<bodies::ApplyRequest>(&body) {
            Ok(request) => request.user_id,
            Err(error) => return Ok(ApplyOutcome::bad_request(format!("invalid JSON body: {error}"))),
        },
    };
    let key = match idempotency_key(headers) {
        Ok(key) => key,
        Err(error) => return Ok(ApplyOutcome::bad_request(error)),
    };
    let user_id = match (identity, named) {
        (Identity::Proven(user), None) => user,
        (Identity::Proven(user), Some(named)) if named == user => user,
        (Identity::Proven(_), Some(_)) => return Ok(ApplyOutcome::bad_request("userId in the body is not the authenticated user")),
        (Identity::FromBody, Some(named)) => named,
        (Identity::FromBody, None) => return Ok(ApplyOutcome::bad_request("invalid JSON body: missing field `userId`")),
    };
    Ok(match key {
        Some(key) => state.apply.apply_with_key(event, user_id, key, &body).await,
        None => state.apply.apply(event, user_id).await,
    })
}

/// The request's `Idempotency-Key`, if it has one; more than one is refused.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, String> {
    let mut values = headers.get_all("idempotency-key").iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(value), None) => IdempotencyKey::parse(value.as_bytes()).map(Some),
        (Some(_), Some(_)) => Err("more than one Idempotency-Key".to_owned()),
    }
}

/// The coupon a user holds in the event
///
/// With a proven identity (jwt or header mode), only the caller's own coupon: another user's
/// is 403.
#[utoipa::path(
    get,
    path = "/v1/events/{event}/users/{userId}",
    operation_id = "userCoupon",
    tag = "events",
    params(
        ("event" = String, Path, description = "Event name in the api's namespace"),
        ("userId" = String, Path, description = "The user"),
    ),
    responses(
        (status = 200, body = bodies::UserCoupon, description = "The user's coupon"),
        (status = 400, response = api_doc::MalformedRequest),
        (status = 401, response = api_doc::Unauthorized),
        (status = 403, body = bodies::StatusBody, description = "Another user's coupon"),
        (status = 404, body = bodies::StatusBody, description = "No such event, or the user holds no coupon"),
        (status = 503, response = api_doc::Unavailable),
    ),
    security(("bearerToken" = []), ("gatewayHeader" = []), ())
)]
async fn user_coupon(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    let Path((name, user)) = match path {
        Ok(path) => path,
        Err(rejection) => return ApplyOutcome::bad_request(rejection.body_text()).into_response(),
    };
    let event = match state.apply.event_id(&name) {
        Ok(event) => event,
        Err(outcome) => return outcome.into_response(),
    };
    match state.auth.identify(&headers).await {
        Err(rejection) => return unauthorized(&rejection),
        Ok(Identity::Proven(caller)) if caller != user => {
            return (StatusCode::FORBIDDEN, [(header::CONTENT_TYPE, "application/json")], bodies::FORBIDDEN_BODY).into_response()
        }
        Ok(_) => {}
    }
    match state.apply.lookup(&event, &user).await {
        LookupOutcome::Found(holding) => axum::Json(bodies::UserCoupon {
            event: event.to_string(),
            user_id: user,
            slot: holding.slot,
            state: holding.state.into(),
            persisted: holding.state == coupon_core::redis::keyspace::HoldingState::Persisted,
        })
        .into_response(),
        LookupOutcome::NoCoupon => {
            (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "application/json")], bodies::NO_COUPON_BODY).into_response()
        }
        LookupOutcome::UnknownEvent => ApplyOutcome::UnknownEvent.into_response(),
        LookupOutcome::Unavailable => ApplyOutcome::Unavailable.into_response(),
    }
}

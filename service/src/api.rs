//! `coupon-service api`: the HTTP apply service (DESIGN.md, "HTTP API").

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{TimeZone, Utc};
use rdkafka::error::KafkaError;
use serde::Deserialize;
use serde_json::json;

use crate::event_id::EventId;
use crate::gate::{read_counters, Decision, Gate};
use crate::health::Health;
use crate::kafka::KafkaSettings;
use crate::metrics::Metrics;
use crate::producer::{CouponProducer, Delivery};
use crate::record::{validate_user_id, CouponRecord};
use crate::redis_conn::RedisHandle;
use crate::retry::Backoff;

/// Health components of the api.
pub const COMPONENTS: &[&str] = &["redis", "kafka"];

/// The OpenAPI document of this api, served at `/openapi.json` (checked against the live
/// api by schemathesis in the test suite).
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Largest apply body accepted; a user id of 128 characters needs far less.
pub const MAX_BODY_BYTES: usize = 1024;

/// Everything a request handler needs.
pub struct ApiState {
    pub namespace: String,
    pub redis: RedisHandle,
    pub gate: Gate,
    kafka: KafkaSettings,
    /// The producer and its generation. An idempotent producer that hit a fatal error (for
    /// example fenced after a timed-out batch) refuses every later record, so it is replaced.
    producer: RwLock<(u64, Arc<CouponProducer>)>,
    pub health: Health,
    pub metrics: Arc<Metrics>,
    /// Events seen sold out, and when: answered 410 without Redis until `sold_out_recheck`
    /// has passed, because a released slot can reopen the event.
    sold_out: RwLock<HashMap<String, Instant>>,
    pub sold_out_recheck: Duration,
    /// Events this process has seen configured. If Redis later knows nothing of one, Redis
    /// lost its data: the answer is 503 (try again), not 404, until the operator has written
    /// the configuration back and the consumer has restored the counters.
    known_events: RwLock<std::collections::HashSet<String>>,
}

impl ApiState {
    pub fn new(
        namespace: String,
        redis: RedisHandle,
        kafka: KafkaSettings,
        health: Health,
        metrics: Arc<Metrics>,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let producer = kafka.producer()?;
        Ok(Self {
            namespace,
            redis,
            gate: Gate::new(),
            kafka,
            producer: RwLock::new((0, Arc::new(producer))),
            health,
            metrics,
            sold_out: RwLock::new(HashMap::new()),
            sold_out_recheck: Duration::from_secs(1),
            known_events: RwLock::new(std::collections::HashSet::new()),
        })
    }

    /// The current producer and its generation.
    pub fn producer(&self) -> (u64, Arc<CouponProducer>) {
        self.producer.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the producer of `generation` if it can no longer produce: a fatal error;
    /// fenced (some brokers fence an idempotent producer whose batch timed out); or a record
    /// timed out although the broker answers, which is what a broker that lost its producer
    /// state after a restart looks like (librdkafka retries `UNKNOWN_PRODUCER_ID` until the
    /// record expires). Later generations are left alone, so concurrent failures replace it
    /// once; the old producer still delivers what it holds before it is dropped.
    fn replace_if_broken(&self, generation: u64, failed: &CouponProducer, error: &KafkaError) {
        use rdkafka::types::RDKafkaErrorCode as Code;
        let fenced = match error {
            KafkaError::MessageProduction(
                Code::ProducerFenced | Code::InvalidProducerEpoch | Code::OutOfOrderSequenceNumber | Code::UnknownProducerId | Code::Fatal,
            ) => true,
            KafkaError::MessageProduction(Code::MessageTimedOut) => self.health.is_ready("kafka"),
            _ => false,
        };
        let reason = match failed.client().fatal_error() {
            Some((_, reason)) => reason,
            None if fenced => error.to_string(),
            None => return,
        };
        let mut current = self.producer.write().unwrap_or_else(|e| e.into_inner());
        if current.0 != generation {
            return;
        }
        match self.kafka.producer() {
            Ok(fresh) => {
                tracing::warn!(%reason, "producer cannot produce any more; replaced it");
                *current = (generation + 1, Arc::new(fresh));
            }
            Err(error) => tracing::error!(%error, "cannot create a new producer"),
        }
    }

    fn is_known(&self, event: &str) -> bool {
        self.known_events.read().unwrap_or_else(|e| e.into_inner()).contains(event)
    }

    fn known_sold_out(&self, event: &str) -> bool {
        let map = self.sold_out.read().unwrap_or_else(|e| e.into_inner());
        map.get(event).is_some_and(|seen| seen.elapsed() < self.sold_out_recheck)
    }

    fn mark_sold_out(&self, event: &str, sold_out: bool) {
        let mut map = self.sold_out.write().unwrap_or_else(|e| e.into_inner());
        if sold_out {
            map.insert(event.to_owned(), Instant::now());
        } else {
            map.remove(event);
        }
    }
}

/// Routes of the api.
pub fn router(state: Arc<ApiState>) -> Router {
    let ops = crate::ops::router(state.health.clone(), state.metrics.clone());
    Router::new()
        .route("/v1/events/{event}/apply", post(apply))
        .route("/v1/events/{event}", get(event_stats))
        .route("/openapi.json", get(|| async { ([("content-type", "application/json")], OPENAPI) }))
        // Paths that match no route (an event name with a '/', say) name no known event.
        .fallback(|| async { status_only(StatusCode::NOT_FOUND, r#"{"status":"unknown_event"}"#) })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
        .merge(ops)
}

/// Starts the probes that keep `/readyz` current.
pub fn spawn_probes(state: &Arc<ApiState>) {
    let redis = state.redis.clone();
    state.health.spawn_probe("redis", Duration::from_secs(1), move || {
        let redis = redis.clone();
        async move {
            match redis.get() {
                Some(mut conn) => redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok(),
                None => false,
            }
        }
    });
    let probe_state = state.clone();
    state.health.spawn_probe("kafka", Duration::from_secs(2), move || {
        let (_, producer) = probe_state.producer();
        async move {
            tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, Duration::from_secs(2)).is_ok())
                .await
                .unwrap_or(false)
        }
    });
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApplyRequest {
    user_id: String,
}

/// An answer with the JSON body the API documents.
fn answer(code: StatusCode, body: serde_json::Value) -> Response {
    (code, Json(body)).into_response()
}

/// An answer whose body is only `{"status": ...}`: a fixed string, no JSON value built per
/// request (the sold-out path answers tens of thousands of these a second).
fn status_only(code: StatusCode, body: &'static str) -> Response {
    (code, [(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn bad_request(error: impl std::fmt::Display) -> Response {
    answer(StatusCode::BAD_REQUEST, json!({"status": "bad_request", "error": error.to_string()}))
}

fn unavailable() -> Response {
    status_only(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"unavailable"}"#)
}

async fn apply(
    State(state): State<Arc<ApiState>>,
    event: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let (status, response) = match event {
        Ok(Path(event)) => decide(&state, event, body).await,
        Err(rejection) => ("bad_request", bad_request(rejection.body_text())),
    };
    state.metrics.answer(status);
    state.metrics.apply_seconds.observe(started.elapsed().as_secs_f64());
    response
}

async fn decide(state: &Arc<ApiState>, event: String, body: Result<Bytes, BytesRejection>) -> (&'static str, Response) {
    let event_id = match EventId::new(&state.namespace, &event) {
        Ok(id) => id,
        Err(error) => return ("bad_request", bad_request(error)),
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let code = rejection.status();
            return ("bad_request", answer(code, json!({"status": "bad_request", "error": rejection.body_text()})));
        }
    };
    let request: ApplyRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => return ("bad_request", bad_request(format!("invalid JSON body: {error}"))),
    };
    if let Err(error) = validate_user_id(&request.user_id) {
        return ("bad_request", bad_request(error));
    }
    if state.known_sold_out(&event) {
        return ("sold_out", status_only(StatusCode::GONE, r#"{"status":"sold_out"}"#));
    }
    let Some(mut conn) = state.redis.get() else { return ("unavailable", unavailable()) };
    if !state.health.is_ready("kafka") {
        // Nothing is counted while the broker is known to be down.
        return ("unavailable", unavailable());
    }
    let decision = match state.gate.apply(&mut conn, &event_id, &request.user_id).await {
        Ok(decision) => decision,
        Err(error) => {
            tracing::warn!(%error, "gate script failed");
            return ("unavailable", unavailable());
        }
    };
    if decision != Decision::UnknownEvent && !state.is_known(&event) {
        state.known_events.write().unwrap_or_else(|e| e.into_inner()).insert(event.clone());
    }
    match decision {
        Decision::UnknownEvent if state.is_known(&event) => ("unavailable", unavailable()),
        Decision::Issued { slot, topic } => {
            state.mark_sold_out(&event, false);
            // The produce and, on failure, the release run to completion even if the client
            // goes away, so no slot is left held by a request nobody waits for.
            let task = tokio::spawn(deliver(state.clone(), event_id, request.user_id, slot, topic));
            match task.await {
                Ok(true) => ("issued", answer(StatusCode::CREATED, json!({"status": "issued", "slot": slot}))),
                _ => ("unavailable", unavailable()),
            }
        }
        Decision::Duplicate => ("duplicate", status_only(StatusCode::CONFLICT, r#"{"status":"duplicate"}"#)),
        Decision::SoldOut => {
            state.mark_sold_out(&event, true);
            ("sold_out", status_only(StatusCode::GONE, r#"{"status":"sold_out"}"#))
        }
        Decision::NotOpen => ("not_open", status_only(StatusCode::FORBIDDEN, r#"{"status":"not_open"}"#)),
        Decision::Closed => ("closed", status_only(StatusCode::FORBIDDEN, r#"{"status":"closed"}"#)),
        Decision::UnknownEvent => ("unknown_event", status_only(StatusCode::NOT_FOUND, r#"{"status":"unknown_event"}"#)),
        Decision::Recovering => ("unavailable", unavailable()),
    }
}

/// Produces the record and waits for the broker's acknowledgement; on failure gives the slot
/// and the user's mark back. Returns whether the record was acknowledged.
async fn deliver(state: Arc<ApiState>, event: EventId, user_id: String, slot: i64, topic: String) -> bool {
    let record = CouponRecord { event: event.to_string(), user_id, slot, issued_at: Utc::now() };
    let payload = serde_json::to_vec(&record).expect("record serializes");
    let (generation, producer) = state.producer();
    let error = match producer.send(&topic, &record.user_id, &payload).await {
        Delivery::Acked => return true,
        Delivery::NotPersisted(error) => error,
        Delivery::PossiblyPersisted(error) => {
            // The broker may hold the record: its slot must not go to anyone else. The user
            // keeps the mark (a retry answers 409); if the record is on the topic, the coupon
            // is theirs.
            state.replace_if_broken(generation, &producer, &error);
            state.metrics.undecided_produces.inc();
            tracing::warn!(%error, event = %event, slot, user = %record.user_id, "produce timed out after sending; the record may be written, so the slot stays taken");
            return false;
        }
    };
    state.replace_if_broken(generation, &producer, &error);
    tracing::warn!(%error, event = %event, slot, "produce failed; releasing the slot");
    state.metrics.released_slots.inc();
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    for _ in 0..20 {
        if let Some(mut conn) = state.redis.get() {
            match state.gate.release(&mut conn, &event, &record.user_id, slot).await {
                Ok(_) => return false,
                Err(error) => tracing::warn!(%error, event = %event, slot, "release failed, retrying"),
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
    tracing::error!(event = %event, slot, user = %record.user_id, "could not release slot: it stays counted without a coupon");
    false
}

async fn event_stats(State(state): State<Arc<ApiState>>, event: Result<Path<String>, PathRejection>) -> Response {
    let Path(event) = match event {
        Ok(event) => event,
        Err(rejection) => return bad_request(rejection.body_text()),
    };
    let event_id = match EventId::new(&state.namespace, &event) {
        Ok(id) => id,
        Err(error) => return bad_request(error),
    };
    let Some(mut conn) = state.redis.get() else { return unavailable() };
    let counters = match read_counters(&mut conn, &event_id).await {
        Ok(Some(counters)) => counters,
        Ok(None) => return status_only(StatusCode::NOT_FOUND, r#"{"status":"unknown_event"}"#),
        Err(error) => {
            tracing::warn!(%error, "cannot read event");
            return unavailable();
        }
    };
    let now = Utc::now().timestamp_millis();
    let state_name = if counters.recovering {
        "recovering"
    } else if now < counters.start_ms {
        "scheduled"
    } else if now >= counters.end_ms {
        "closed"
    } else if counters.issued >= counters.limit {
        "sold_out"
    } else {
        "open"
    };
    let rfc3339 = |ms: i64| Utc.timestamp_millis_opt(ms).single().map(|t| t.to_rfc3339()).unwrap_or_default();
    answer(
        StatusCode::OK,
        json!({
            "event": event_id.to_string(),
            "limit": counters.limit,
            "issued": counters.issued,
            "remaining": (counters.limit - counters.issued).max(0),
            "persisted": counters.persisted,
            "opensAt": rfc3339(counters.start_ms),
            "closesAt": rfc3339(counters.end_ms),
            "state": state_name,
        }),
    )
}

/// Flushes records still in the producer's queue before the process exits.
pub fn flush_producer(state: &ApiState, timeout: Duration) {
    if let Err(error) = state.producer().1.flush(timeout) {
        tracing::warn!(%error, "producer flush incomplete at shutdown");
    }
}

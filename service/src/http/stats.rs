//! `GET /v1/events/{event}`: an event's window, limit and counters.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use coupon_core::event::EventId;
use coupon_core::redis::keyspace::{self, EventCounters};
use jiff::Timestamp;
use serde::Serialize;

use super::stats_cache::StatsRead;
use super::ApiState;
use crate::apply::ApplyOutcome;

/// An event's limit, counters, window and state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventStats {
    /// `<namespace>/<name>`.
    pub event: String,
    pub limit: i64,
    pub issued: i64,
    pub remaining: i64,
    pub persisted: i64,
    /// RFC 3339, in UTC (`…Z`).
    #[schema(value_type = String, format = DateTime)]
    pub opens_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub closes_at: Timestamp,
    pub state: EventState,
}

/// Where the event stands now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventState {
    Recovering,
    Scheduled,
    Closed,
    SoldOut,
    Open,
}

impl EventStats {
    /// The stats of `event` at `now_ms`.
    pub fn from_counters(event: String, counters: &EventCounters, now_ms: i64) -> Self {
        let state = if counters.recovering {
            EventState::Recovering
        } else if now_ms < counters.start_ms {
            EventState::Scheduled
        } else if now_ms >= counters.end_ms {
            EventState::Closed
        } else if counters.issued >= counters.limit {
            EventState::SoldOut
        } else {
            EventState::Open
        };
        let at = coupon_core::time::timestamp_from_millis_clamped;
        Self {
            event,
            limit: counters.limit,
            issued: counters.issued,
            remaining: (counters.limit - counters.issued).max(0),
            persisted: counters.persisted,
            opens_at: at(counters.start_ms),
            closes_at: at(counters.end_ms),
            state,
        }
    }
}

/// An event's limit, counters, window and state
///
/// From each api's memory, read at most once a second per event (a name nobody provisioned
/// is remembered for 5 s), so polling it costs the sale nothing.
#[utoipa::path(
    get,
    path = "/v1/events/{event}",
    operation_id = "eventStats",
    tag = "events",
    params(("event" = String, Path, description = "Event name in the api's namespace")),
    responses(
        (status = 200, body = EventStats, description = "The event"),
        (status = 400, response = super::api_doc::MalformedRequest),
        (status = 404, response = super::api_doc::UnknownEvent),
        (status = 503, response = super::api_doc::Unavailable),
    )
)]
// (`StatsCache` keeps one read of the list of events and one of each event's counters per
// second, whatever the number of requests or of names.)
pub async fn event_stats(State(state): State<Arc<ApiState>>, event: Result<Path<String>, PathRejection>) -> Response {
    let Path(name) = match event {
        Ok(event) => event,
        Err(rejection) => return ApplyOutcome::bad_request(rejection.body_text()).into_response(),
    };
    let event = match state.apply.event_id(&name) {
        Ok(event) => event,
        Err(outcome) => return outcome.into_response(),
    };
    let redis = state.redis.clone();
    let registered = state
        .stats
        .is_registered(&event, move || async move {
            let mut conn = redis.get()?;
            match keyspace::registered_events(&mut conn).await {
                Ok(names) => Some(names.into_iter().collect()),
                Err(error) => {
                    tracing::warn!(%error, "cannot read the list of events");
                    None
                }
            }
        })
        .await;
    let read = match registered {
        None => StatsRead::Failed,
        Some(false) => StatsRead::Unknown,
        Some(true) => state.stats.get(&event, read_stats(state.clone(), event.clone())).await,
    };
    match read {
        StatsRead::Known(counters) => {
            Json(EventStats::from_counters(event.to_string(), &counters, Timestamp::now().as_millisecond())).into_response()
        }
        // Served here but unknown to Redis: Redis lost its data (503 until it is restored),
        // as applies answer.
        StatsRead::Unknown if state.apply.served(&event) => ApplyOutcome::Unavailable.into_response(),
        StatsRead::Unknown => ApplyOutcome::UnknownEvent.into_response(),
        StatsRead::Failed => ApplyOutcome::Unavailable.into_response(),
    }
}

/// One read of an event's counters, with the layout the api keeps.
async fn read_stats(state: Arc<ApiState>, event: EventId) -> StatsRead {
    let Some(mut conn) = state.redis.get() else { return StatsRead::Failed };
    let counters = match state.apply.layout(&mut conn, &event).await {
        Ok(layout) => keyspace::counters_in(&mut conn, &layout).await,
        Err(error) => Err(error),
    };
    match counters {
        Ok(Some(counters)) => StatsRead::Known(counters),
        Ok(None) => StatsRead::Unknown,
        Err(error) => {
            tracing::warn!(%error, "cannot read event");
            StatsRead::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_follows_window_counters_and_recovery() {
        let counters = EventCounters { limit: 10, start_ms: 1_000, end_ms: 2_000, issued: 3, ..Default::default() };
        let at = |now, counters: &EventCounters| EventStats::from_counters("a/b".into(), counters, now).state;
        assert_eq!(at(999, &counters), EventState::Scheduled);
        assert_eq!(at(1_000, &counters), EventState::Open);
        assert_eq!(at(2_000, &counters), EventState::Closed);
        assert_eq!(at(1_500, &EventCounters { issued: 10, ..counters.clone() }), EventState::SoldOut);
        assert_eq!(at(1_500, &EventCounters { recovering: true, ..counters.clone() }), EventState::Recovering);
        let json = serde_json::to_value(EventStats::from_counters("a/b".into(), &counters, 1_500)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"event": "a/b", "limit": 10, "issued": 3, "remaining": 7, "persisted": 0,
                "opensAt": "1970-01-01T00:00:01Z", "closesAt": "1970-01-01T00:00:02Z", "state": "open"})
        );
    }
}

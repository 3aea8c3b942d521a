//! The JSON bodies the api answers, as types: the handlers build them (or, on the hot paths,
//! fixed bytes that the tests below parse back into them), and the OpenAPI document
//! (`api_doc`) is generated from them, so the document cannot drift from what is sent.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Why an answer carries only a status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatusLabel {
    SoldOut,
    NotOpen,
    Closed,
    Paused,
    UnknownEvent,
    NoCoupon,
    Unavailable,
    Unauthorized,
    Forbidden,
    /// The `Idempotency-Key` was used before with another request body (422).
    IdempotencyKeyReused,
    /// The `Idempotency-Key`'s first request is still under way (409).
    InFlight,
}

/// An answer that says only why: `{"status": "sold_out"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = Status)]
pub struct StatusBody {
    pub status: StatusLabel,
    /// Why, where there is more than one cause (`overloaded`: the api is at its cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String)]
    pub reason: Option<String>,
}

/// The status of an issued coupon's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IssuedLabel {
    Issued,
}

/// A coupon handed out: `{"status": "issued", "slot": 7}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = Issued)]
pub struct IssuedBody {
    pub status: IssuedLabel,
    #[schema(minimum = 1)]
    pub slot: i64,
}

/// The status of the answer to a user who holds a coupon already.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DuplicateLabel {
    Duplicate,
}

/// The user holds a coupon already: its slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = Duplicate)]
pub struct DuplicateBody {
    pub status: DuplicateLabel,
    /// The slot being delivered to the user, else the first they hold.
    #[schema(minimum = 1)]
    pub slot: i64,
    /// Every slot the user holds, when the event gives a user more than one
    /// (`perUserLimit`) and they hold more than one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slots: Vec<i64>,
}

/// A 409: the user holds a coupon already, or the request's `Idempotency-Key` is still in
/// use by its first request (`{"status": "in_flight"}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
#[schema(as = Conflict)]
pub enum ConflictBody {
    Duplicate(DuplicateBody),
    InFlight(StatusBody),
}

/// The status of the answer to a malformed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BadRequestLabel {
    BadRequest,
}

/// A malformed request, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = BadRequest)]
pub struct BadRequestBody {
    pub status: BadRequestLabel,
    pub error: String,
}

/// The body of `POST /v1/events/{event}/apply`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = ApplyRequest)]
pub struct ApplyRequest {
    /// The user in `open` mode; with a proven identity optional, and refused when it names someone else.
    #[serde(default)]
    #[schema(value_type = String, min_length = 1, max_length = 128, pattern = "^[!-~]+$")]
    pub user_id: Option<String>,
}

/// Where a user's coupon stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CouponState {
    /// Issued; the record's delivery not acknowledged yet.
    Pending,
    /// The broker has the record.
    Acknowledged,
    /// The row is written.
    Persisted,
}

impl From<coupon_core::redis::keyspace::HoldingState> for CouponState {
    fn from(state: coupon_core::redis::keyspace::HoldingState) -> Self {
        use coupon_core::redis::keyspace::HoldingState;
        match state {
            HoldingState::Pending => Self::Pending,
            HoldingState::Acknowledged => Self::Acknowledged,
            HoldingState::Persisted => Self::Persisted,
        }
    }
}

/// The user's coupon as `GET /v1/events/{event}/users/{userId}` answers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = UserCoupon)]
pub struct UserCoupon {
    pub event: String,
    pub user_id: String,
    #[schema(minimum = 1)]
    pub slot: i64,
    pub state: CouponState,
    /// Whether the row is written to SQL.
    pub persisted: bool,
}

/// `/readyz`: whether the process is ready, and each dependency's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = Readiness)]
pub struct ReadinessBody {
    pub ready: bool,
    pub components: std::collections::BTreeMap<String, bool>,
}

/// Fixed bodies of the user-coupon route (fixed bytes, like `ApplyOutcome`'s).
pub const FORBIDDEN_BODY: &str = r#"{"status":"forbidden"}"#;
pub const NO_COUPON_BODY: &str = r#"{"status":"no_coupon"}"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::ApplyOutcome;

    /// `body` is exactly a `T`: it parses into one, and nothing is lost writing it back (no
    /// field the type, and so the document, does not name).
    fn is_exactly<T: serde::de::DeserializeOwned + Serialize>(body: &str) {
        let parsed: T = serde_json::from_str(body).unwrap_or_else(|e| panic!("{body}: {e}"));
        let written = serde_json::to_value(&parsed).unwrap();
        assert_eq!(written, serde_json::from_str::<serde_json::Value>(body).unwrap(), "{body}");
    }

    /// Every body the api writes as fixed bytes or by hand is the type the document publishes
    /// for it: what is sent is what is documented.
    #[test]
    fn every_body_sent_is_the_documented_type() {
        for kind in ApplyOutcome::KINDS {
            match kind {
                ApplyOutcome::Issued { .. } => is_exactly::<IssuedBody>(&ApplyOutcome::Issued { slot: 7 }.body()),
                ApplyOutcome::Duplicate { .. } => {
                    for duplicate in
                        [ApplyOutcome::Duplicate { slot: 3, slots: Vec::new() }, ApplyOutcome::Duplicate { slot: 3, slots: vec![3, 5] }]
                    {
                        is_exactly::<DuplicateBody>(&duplicate.body());
                        is_exactly::<ConflictBody>(&duplicate.body());
                    }
                }
                ApplyOutcome::InFlight => is_exactly::<ConflictBody>(&kind.body()),
                _ => is_exactly::<StatusBody>(&kind.body()),
            }
        }
        is_exactly::<BadRequestBody>(&ApplyOutcome::bad_request("x").body());
        for fixed in [FORBIDDEN_BODY, NO_COUPON_BODY, crate::http::server::OVERLOADED_BODY] {
            is_exactly::<StatusBody>(fixed);
        }
    }
}

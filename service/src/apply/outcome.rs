//! The answer to one apply: one enum, and one table giving each answer its HTTP status, its
//! metric label and its body.

use crate::http::bodies::{BadRequestBody, BadRequestLabel, DuplicateBody, DuplicateLabel, IssuedBody, IssuedLabel};

/// How an apply ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The user holds `slot` and the broker has the record.
    Issued {
        slot: i64,
    },
    /// The user holds `slot` already; `slots`: every slot they hold, when more than one (an
    /// event with a `per_user` above one, answered by the gate).
    Duplicate {
        slot: i64,
        slots: Vec<i64>,
    },
    SoldOut,
    NotOpen,
    Closed,
    /// The shop paused the event.
    Paused,
    UnknownEvent,
    /// Redis or Kafka unavailable, or the event being restored: nothing counted.
    Unavailable,
    /// No acceptable identity (token or gateway header): nothing counted.
    Unauthorized,
    /// The request itself is wrong; `status` is 400, or 413 for a body over the limit.
    BadRequest {
        status: u16,
        error: String,
    },
    /// The `Idempotency-Key` was used before with another request body.
    KeyReused,
    /// The `Idempotency-Key`'s first request is still under way.
    InFlight,
    /// The `Idempotency-Key`'s request was answered: that answer again.
    Replayed {
        status: u16,
        body: String,
    },
}

impl ApplyOutcome {
    /// Every answer kind once, for documentation and the load tool's report.
    pub const KINDS: [ApplyOutcome; 11] = [
        Self::Issued { slot: 0 },
        Self::Duplicate { slot: 0, slots: Vec::new() },
        Self::SoldOut,
        Self::NotOpen,
        Self::Closed,
        Self::Paused,
        Self::UnknownEvent,
        Self::Unavailable,
        Self::Unauthorized,
        Self::KeyReused,
        Self::InFlight,
    ];

    /// The table: HTTP status, metric label (also the body's `status`), and the fixed body
    /// of answers that carry only their status. Fixed bytes, not a JSON value built per
    /// request: the sold-out path answers tens of thousands of these a second.
    fn row(&self) -> (u16, &'static str, Option<&'static str>) {
        match self {
            Self::Issued { .. } => (201, "issued", None),
            Self::Duplicate { .. } => (409, "duplicate", None),
            Self::SoldOut => (410, "sold_out", Some(r#"{"status":"sold_out"}"#)),
            Self::NotOpen => (403, "not_open", Some(r#"{"status":"not_open"}"#)),
            Self::Closed => (403, "closed", Some(r#"{"status":"closed"}"#)),
            Self::Paused => (403, "paused", Some(r#"{"status":"paused"}"#)),
            Self::UnknownEvent => (404, "unknown_event", Some(r#"{"status":"unknown_event"}"#)),
            Self::Unavailable => (503, "unavailable", Some(r#"{"status":"unavailable"}"#)),
            Self::Unauthorized => (401, "unauthorized", Some(r#"{"status":"unauthorized"}"#)),
            Self::BadRequest { status, .. } => (*status, "bad_request", None),
            Self::KeyReused => (422, "idempotency_key_reused", Some(r#"{"status":"idempotency_key_reused"}"#)),
            Self::InFlight => (409, "in_flight", Some(r#"{"status":"in_flight"}"#)),
            Self::Replayed { status, .. } => (*status, "replayed", None),
        }
    }

    pub fn bad_request(error: impl std::fmt::Display) -> Self {
        Self::BadRequest { status: 400, error: error.to_string() }
    }

    pub fn http_status(&self) -> u16 {
        self.row().0
    }

    /// Metric label and the body's `status` field.
    pub fn label(&self) -> &'static str {
        self.row().1
    }

    /// The JSON body: one of `http::bodies`' types (the fixed ones are checked to parse into
    /// `StatusBody` there).
    pub fn body(&self) -> std::borrow::Cow<'static, str> {
        let (_, _, fixed) = self.row();
        if let Some(fixed) = fixed {
            return fixed.into();
        }
        let body = match self {
            Self::Issued { slot } => serde_json::to_string(&IssuedBody { status: IssuedLabel::Issued, slot: *slot }),
            Self::Duplicate { slot, slots } => {
                serde_json::to_string(&DuplicateBody { status: DuplicateLabel::Duplicate, slot: *slot, slots: slots.clone() })
            }
            Self::Replayed { body, .. } => Ok(body.clone()),
            Self::BadRequest { error, .. } => {
                serde_json::to_string(&BadRequestBody { status: BadRequestLabel::BadRequest, error: error.clone() })
            }
            // Every other kind has a fixed body in `row`.
            other => Ok(format!(r#"{{"status":"{}"}}"#, other.label())),
        };
        body.unwrap_or_default().into()
    }

    /// The labels answered with `status`, e.g. `not_open/closed` for 403 (the load tool's
    /// report).
    pub fn labels_for_status(status: u16) -> String {
        let labels: Vec<&str> = Self::KINDS.iter().filter(|k| k.http_status() == status).map(Self::label).collect();
        match (labels.is_empty(), status) {
            (false, _) => labels.join("/"),
            (true, 400 | 413) => "bad_request".to_owned(),
            (true, 0) => "no answer".to_owned(),
            (true, _) => "other".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_bodies_say_their_label_as_json_would() {
        for kind in ApplyOutcome::KINDS.iter().filter(|k| !matches!(k, ApplyOutcome::Issued { .. } | ApplyOutcome::Duplicate { .. })) {
            let body: serde_json::Value = serde_json::from_str(&kind.body()).unwrap();
            assert_eq!(body, serde_json::json!({"status": kind.label()}), "{kind:?}");
        }
    }

    #[test]
    fn bodies_with_more_than_a_status() {
        let issued: serde_json::Value = serde_json::from_str(&ApplyOutcome::Issued { slot: 7 }.body()).unwrap();
        assert_eq!(issued, serde_json::json!({"status": "issued", "slot": 7}));
        let duplicate: serde_json::Value = serde_json::from_str(&ApplyOutcome::Duplicate { slot: 3, slots: Vec::new() }.body()).unwrap();
        assert_eq!(duplicate, serde_json::json!({"status": "duplicate", "slot": 3}));
        let several = ApplyOutcome::Duplicate { slot: 9, slots: vec![3, 9, 12] };
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&several.body()).unwrap(),
            serde_json::json!({"status": "duplicate", "slot": 9, "slots": [3, 9, 12]})
        );
        let bad = ApplyOutcome::BadRequest { status: 413, error: "too big".into() };
        assert_eq!(bad.http_status(), 413);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&bad.body()).unwrap(),
            serde_json::json!({"status": "bad_request", "error": "too big"})
        );
    }

    #[test]
    fn the_load_report_names_statuses_with_the_same_labels() {
        assert_eq!(ApplyOutcome::labels_for_status(403), "not_open/closed/paused");
        assert_eq!(ApplyOutcome::labels_for_status(410), "sold_out");
        assert_eq!(ApplyOutcome::labels_for_status(409), "duplicate/in_flight");
        assert_eq!(ApplyOutcome::labels_for_status(422), "idempotency_key_reused");
        assert_eq!(ApplyOutcome::labels_for_status(401), "unauthorized");
        assert_eq!(ApplyOutcome::labels_for_status(413), "bad_request");
        assert_eq!(ApplyOutcome::labels_for_status(0), "no answer");
    }
}

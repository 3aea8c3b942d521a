//! The Kafka record the api produces and the consumer writes: key the user id, value this
//! JSON (`docs/architecture.md`, "Data contracts").

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// One issued coupon on its way to SQL. Key on the topic: the user id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CouponRecord {
    /// `<namespace>/<name>`.
    pub event: String,
    pub user_id: String,
    pub slot: i64,
    /// Which of the user's coupons of the event this is (1 up to the event's `per_user`,
    /// at most `MAX_PER_USER`): the row's, unique per event and user. Left out when 1, so an
    /// event of one coupon per user writes the record it always did.
    #[serde(default = "first_ordinal", skip_serializing_if = "is_first_ordinal")]
    pub ordinal: i64,
    /// RFC 3339 in UTC (`…Z`); readers take any offset.
    pub issued_at: Timestamp,
    /// `<key id>:<tag>`: the api's signature over the fields (`signing`), when it has keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// Most coupons of one event a user may hold (`per_user`): the SQL check on the ordinal.
pub const MAX_PER_USER: i64 = 100;

fn first_ordinal() -> i64 {
    1
}

fn is_first_ordinal(ordinal: &i64) -> bool {
    *ordinal == 1
}

/// Longest user id the api accepts, and the SQL column width.
pub const MAX_USER_ID_LEN: usize = 128;

/// Why a user id is refused: the id lands in Redis keys' members, Kafka keys and SQL, so it
/// is kept to printable ASCII without spaces.
pub fn validate_user_id(user_id: &str) -> Result<(), String> {
    if user_id.is_empty() || user_id.len() > MAX_USER_ID_LEN {
        return Err(format!("userId must be 1..={MAX_USER_ID_LEN} characters"));
    }
    if !user_id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("userId may contain only printable ASCII characters without spaces".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_json_matches_the_contract() {
        let record = CouponRecord {
            event: "shop/sale".into(),
            user_id: "u1".into(),
            slot: 7,
            ordinal: 1,
            issued_at: "2026-11-27T10:00:00Z".parse().unwrap(),
            mac: None,
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json, serde_json::json!({"event":"shop/sale","userId":"u1","slot":7,"issuedAt":"2026-11-27T10:00:00Z"}));
        let back: CouponRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
        // A user's second coupon says which it is; the first never did.
        let second = CouponRecord { ordinal: 2, ..record.clone() };
        let json = serde_json::to_value(&second).unwrap();
        assert_eq!(json["ordinal"], 2);
        assert_eq!(serde_json::from_value::<CouponRecord>(json).unwrap(), second);
        let signed = CouponRecord { mac: Some("k1:tag".into()), ..record };
        assert_eq!(serde_json::to_value(&signed).unwrap()["mac"], "k1:tag");
    }

    #[test]
    fn user_id_bounds() {
        assert!(validate_user_id("a").is_ok());
        assert!(validate_user_id(&"a".repeat(128)).is_ok());
        assert!(validate_user_id("").is_err());
        assert!(validate_user_id(&"a".repeat(129)).is_err());
        assert!(validate_user_id("a b").is_err());
        assert!(validate_user_id("é").is_err());
    }
}

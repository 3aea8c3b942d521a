//! Users' entries: what a user holds, and `WAIT` for the replicas of a user's shard.

use redis::RedisResult;

use crate::redis::RedisConnection;

use super::{field, EventLayout};

/// A user's coupon in the gate.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Holding {
    pub slot: i64,
    pub state: HoldingState,
    /// Whether the user was answered 201 for it (false for a row written after an apply
    /// that answered 503: their next apply answers 201).
    #[serde(skip)]
    pub confirmed: bool,
}

/// How far a user's coupon got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldingState {
    /// Issued; the record's delivery has not been acknowledged (yet).
    Pending,
    /// The broker acknowledged the record.
    Acknowledged,
    /// The consumer wrote the row.
    Persisted,
}

/// Parses a user's entries (`slot:state[:ordinal]` separated by spaces).
pub(super) fn parse_holdings(value: &str) -> Vec<Holding> {
    value
        .split_ascii_whitespace()
        .filter_map(|entry| {
            let mut parts = entry.split(':');
            let (slot, state) = (parts.next()?, parts.next()?);
            let (state, confirmed) = match state {
                "p" => (HoldingState::Pending, false),
                "a" => (HoldingState::Acknowledged, true),
                "w" => (HoldingState::Persisted, true),
                "x" => (HoldingState::Persisted, false),
                _ => return None,
            };
            Some(Holding { slot: slot.parse().ok()?, state, confirmed })
        })
        .collect()
}

/// Of a user's entries, the one that speaks for them where one answer is kept per user (the
/// sold-out short cut): an entry still pending or never confirmed, which only the gate may
/// settle, before any other; else the first.
pub fn representative(holdings: Vec<Holding>) -> Option<Holding> {
    let unsettled = holdings.iter().position(|holding| holding.state == HoldingState::Pending || !holding.confirmed);
    let at = unsettled.unwrap_or(0);
    holdings.into_iter().nth(at)
}

/// The coupons `user` holds in the event (one read, on the user's home shard).
pub async fn holdings(conn: &mut RedisConnection, layout: &EventLayout, user: &str) -> RedisResult<Vec<Holding>> {
    let value: Option<String> = redis::cmd("HGET").arg(&layout.user_keys(user).1.users).arg(user).query_async(conn).await?;
    Ok(value.as_deref().map(parse_holdings).unwrap_or_default())
}

/// A user's coupon as `GET /v1/events/{event}/users/{userId}` reads it: whether the event is
/// provisioned and being verified, and the user's entries (one read-only round trip).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserView {
    pub provisioned: bool,
    pub recovering: bool,
    pub holdings: Vec<Holding>,
}

/// Reads `UserView` in one pipeline, on the user's home shard (whose configuration is a copy
/// of the event's).
pub async fn user_view(conn: &mut RedisConnection, layout: &EventLayout, user: &str) -> RedisResult<UserView> {
    let keys = layout.user_keys(user).1;
    let ((limit, recovering), value): ((Option<i64>, Option<String>), Option<String>) =
        redis::pipe().hget(&keys.config, &[field::LIMIT, field::RECOVERING]).hget(&keys.users, user).query_async(conn).await?;
    Ok(UserView {
        provisioned: limit.is_some(),
        recovering: recovering.as_deref() == Some("1"),
        holdings: value.as_deref().map(parse_holdings).unwrap_or_default(),
    })
}

/// `WAIT`: blocks until `replicas` replicas of the master of `user`'s home shard acknowledged
/// the writes this connection made there, or `timeout`; returns how many did.
pub async fn wait_for_replicas(
    conn: &mut RedisConnection,
    layout: &EventLayout,
    user: &str,
    replicas: u32,
    timeout: std::time::Duration,
) -> RedisResult<i64> {
    let key = &layout.user_keys(user).1.config;
    conn.query_at(key, redis::cmd("WAIT").arg(replicas).arg(timeout.as_millis() as u64)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_and_skip_what_is_not_an_entry() {
        assert_eq!(
            parse_holdings("3:p 7:w x:y 9:q 4:x"),
            vec![
                Holding { slot: 3, state: HoldingState::Pending, confirmed: false },
                Holding { slot: 7, state: HoldingState::Persisted, confirmed: true },
                Holding { slot: 4, state: HoldingState::Persisted, confirmed: false }
            ]
        );
        assert!(parse_holdings("").is_empty());
        assert_eq!(representative(parse_holdings("3:w 8:x:2")).map(|h| h.slot), Some(8), "the unconfirmed one speaks");
        assert_eq!(representative(parse_holdings("3:w 8:a:2 9:p:3")).map(|h| h.slot), Some(9), "the pending one speaks");
        assert_eq!(representative(parse_holdings("3:w 8:a:2")).map(|h| h.slot), Some(3));
        assert_eq!(representative(Vec::new()), None);
        // A user's second and third coupons carry their ordinal.
        assert_eq!(
            parse_holdings("3:a 8:p:2 11:w:3"),
            vec![
                Holding { slot: 3, state: HoldingState::Acknowledged, confirmed: true },
                Holding { slot: 8, state: HoldingState::Pending, confirmed: false },
                Holding { slot: 11, state: HoldingState::Persisted, confirmed: true }
            ]
        );
    }
}

//! `Idempotency-Key` (draft-ietf-httpapi-idempotency-key-header): the keys of an event's
//! applies, per user, on the user's home shard (`lua/idempotency_claim.lua`,
//! `lua/idempotency_finish.lua`). A request claims its key before the apply runs and keeps
//! its answer after; the key's next request is answered from what was kept. Work per
//! request is bounded by `MAX_KEYS_PER_USER`, never by the event's size.

use std::time::Duration;

use redis::RedisResult;

use super::codes::Answer;
use super::contract;
use super::layout::EventLayout;
use crate::redis::RedisConnection;

/// Keys kept per user and event: a new one past this many pushes out the oldest.
pub const MAX_KEYS_PER_USER: usize = 16;
/// How long keys outlive the event's window: a client retrying after the sale closed still
/// gets its answer.
pub const GRACE: Duration = Duration::from_secs(24 * 3600);

/// What a request carrying a key does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The key is this request's: run the apply, then `finish` with `claimed_ms`.
    Run { claimed_ms: i64 },
    /// The key's request was answered: this answer, again.
    Replay { status: u16, body: String },
    /// The key was used with another request body.
    KeyReused,
    /// The key's first request is still under way.
    InFlight,
    /// The event has no configuration here: run the apply without the key (it says why).
    Untracked,
}

/// Claims `key` for `user`'s apply with a body of `fingerprint`. A claim older than
/// `in_flight` whose answer never came (an api that died mid-request) is taken over.
pub async fn claim(
    conn: &mut RedisConnection,
    layout: &EventLayout,
    user: &str,
    key: &str,
    fingerprint: &str,
    in_flight: Duration,
) -> RedisResult<Claim> {
    let (_, keys) = layout.user_keys(user);
    let hash = keys.idempotency_keys(user);
    let mut invocation = contract::IDEMPOTENCY_CLAIM.invocation(keys, &[("idempotency_keys", hash.as_str())]);
    invocation.arg(key).arg(fingerprint).arg(in_flight.as_millis() as u64).arg(GRACE.as_millis() as u64).arg(MAX_KEYS_PER_USER);
    let (code, status, body, claimed_ms): (i64, i64, String, i64) = invocation.invoke_async(conn).await?;
    Ok(match Answer::of("idempotency_claim", code)? {
        Answer::Done => Claim::Run { claimed_ms },
        Answer::Replay => Claim::Replay { status: u16::try_from(status).unwrap_or(500), body },
        Answer::KeyReused => Claim::KeyReused,
        Answer::InFlight => Claim::InFlight,
        Answer::Missing => Claim::Untracked,
        other => return Err(other.unexpected("idempotency_claim")),
    })
}

/// Keeps the answer (not a 5xx) of the request that claimed `key` at `claimed_ms`. Answers
/// false if the claim is no longer that request's.
#[allow(clippy::too_many_arguments)]
pub async fn finish(
    conn: &mut RedisConnection,
    layout: &EventLayout,
    user: &str,
    key: &str,
    fingerprint: &str,
    claimed_ms: i64,
    status: u16,
    body: &str,
) -> RedisResult<bool> {
    let (_, keys) = layout.user_keys(user);
    let hash = keys.idempotency_keys(user);
    let mut invocation = contract::IDEMPOTENCY_FINISH.invocation(keys, &[("idempotency_keys", hash.as_str())]);
    invocation.arg(key).arg(fingerprint).arg(claimed_ms).arg(status).arg(body);
    let code: i64 = invocation.invoke_async(conn).await?;
    match Answer::of("idempotency_finish", code)? {
        Answer::Done => Ok(true),
        Answer::Nothing => Ok(false),
        other => Err(other.unexpected("idempotency_finish")),
    }
}

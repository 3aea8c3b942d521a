//! Applies that carry an `Idempotency-Key` (draft-ietf-httpapi-idempotency-key-header): a
//! client that retries an apply whose answer it lost (a timeout, a dropped connection) gets
//! the first answer again, marked `Idempotent-Replayed`, instead of a second decision.
//!
//! The key is the caller's: scoped to the event and the user the request names or proves,
//! kept in Redis beside the user's entry (`keyspace::idempotency`). A request claims its key,
//! the apply runs as any other, and its answer is kept. A 5xx is not kept, and its claim is
//! not let go either: a 503 may follow a slot issued whose record the broker may hold, and
//! with more than one coupon per user a retry run at once would be issued a second slot. The
//! claim stays in flight (retries answered 409) until the delivery's lease has passed; then a
//! retry runs again, and the gate delivers that same slot again before it issues another.
//! The same key with another body is 422; while its first request runs, 409 at once. Without
//! the header nothing of this runs.

use std::sync::Arc;
use std::time::Duration;

use coupon_core::event::{validate_user_id, EventId};
use coupon_core::redis::keyspace::idempotency::{self, Claim};
use sha2::{Digest, Sha256};

use super::{ApplyOutcome, ApplyService};

/// Longest key accepted (its characters, without the quotes).
pub const MAX_KEY_LEN: usize = 255;
/// Beyond the delivery's lease, how long an apply may take from its claim to its gate call
/// (the 3 s a request keeps for Redis, with room to spare): a claim older than both was left
/// by a request that ended without an answer to keep (a 5xx, an api that died), and the
/// lease of any slot it was issued has passed, so the gate delivers that slot again.
const IN_FLIGHT_MARGIN: Duration = Duration::from_secs(5);

/// A request's `Idempotency-Key`, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The header's value: a Structured Field string (RFC 8941: `"..."`, with `\"` and `\\`
    /// escapes), as the draft has it, or, as many clients send a UUID, the bare characters
    /// (visible ASCII without `"`, `\` or `,`). Not empty, at most `MAX_KEY_LEN` characters.
    pub fn parse(value: &[u8]) -> Result<Self, String> {
        let refuse = |why: &str| Err(format!("Idempotency-Key {why}"));
        let key = match value {
            [b'"', inner @ .., b'"'] => {
                let mut key = String::with_capacity(inner.len());
                let mut chars = inner.iter();
                while let Some(&c) = chars.next() {
                    match c {
                        b'\\' => match chars.next() {
                            Some(&escaped @ (b'"' | b'\\')) => key.push(escaped as char),
                            _ => return refuse("has a backslash that escapes neither '\"' nor '\\'"),
                        },
                        b'"' => return refuse("has an unescaped '\"' inside its quotes"),
                        b' '..=b'~' => key.push(c as char),
                        _ => return refuse("may hold only printable ASCII"),
                    }
                }
                key
            }
            bare => {
                if !bare.iter().all(|c| c.is_ascii_graphic() && !matches!(c, b'"' | b'\\' | b',')) {
                    return refuse("must be a quoted string (\"...\") or printable ASCII without spaces, quotes, backslashes or commas");
                }
                String::from_utf8_lossy(bare).into_owned()
            }
        };
        if key.is_empty() {
            return refuse("is empty");
        }
        if key.len() > MAX_KEY_LEN {
            return refuse(&format!("is longer than {MAX_KEY_LEN} characters"));
        }
        Ok(Self(key))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What identifies a request's body: two requests with one key must carry the same bytes.
fn fingerprint(body: &[u8]) -> String {
    Sha256::digest(body).iter().map(|byte| format!("{byte:02x}")).collect()
}

impl ApplyService {
    /// Decides `user_id`'s apply as `apply` does, under `key`: the answer of the key's earlier
    /// request with the same `body` if there was one (`ApplyOutcome::Replayed`), else the
    /// apply's, kept for the key's next request.
    pub async fn apply_with_key(self: &Arc<Self>, event: EventId, user_id: String, key: IdempotencyKey, body: &[u8]) -> ApplyOutcome {
        // Checked before the id names a Redis key.
        if let Err(error) = validate_user_id(&user_id) {
            return ApplyOutcome::bad_request(error);
        }
        // Sold out or closed, as answered from memory: nothing to decide, nothing kept, no
        // Redis call (a storm of keyed applies to a sold-out sale costs what it costs without
        // keys). A holder goes on to the key's claim, which may have their 201 to answer.
        if let Some(view) = self.sold_out.sold_out(event.name()) {
            if let Some(answer @ (ApplyOutcome::SoldOut | ApplyOutcome::Closed)) = self.answer_sold_out(&event, &user_id, view).await {
                return answer;
            }
        }
        let fingerprint = fingerprint(body);
        // Claim, apply and keeping the answer run in their own task: a client that goes away
        // cannot leave a claim without its answer.
        let this = self.clone();
        tokio::spawn(async move { this.keyed(event, user_id, key, fingerprint).await }).await.unwrap_or(ApplyOutcome::Unavailable)
    }

    async fn keyed(self: Arc<Self>, event: EventId, user_id: String, key: IdempotencyKey, fingerprint: String) -> ApplyOutcome {
        let Some(mut conn) = self.redis.get() else { return ApplyOutcome::Unavailable };
        let layout = match self.layout(&mut conn, &event).await {
            Ok(layout) => layout,
            Err(error) => {
                tracing::warn!(%error, "cannot read the event's layout for an Idempotency-Key");
                return ApplyOutcome::Unavailable;
            }
        };
        let in_flight = self.lease + IN_FLIGHT_MARGIN;
        let claimed_ms = match idempotency::claim(&mut conn, &layout, &user_id, key.as_str(), &fingerprint, in_flight).await {
            Ok(Claim::Run { claimed_ms }) => claimed_ms,
            Ok(Claim::Replay { status, body }) => return ApplyOutcome::Replayed { status, body },
            Ok(Claim::KeyReused) => return ApplyOutcome::KeyReused,
            Ok(Claim::InFlight) => return ApplyOutcome::InFlight,
            // No configuration: the apply answers why (unknown event, or 503 while restored).
            Ok(Claim::Untracked) => return self.apply(event, user_id).await,
            Err(error) => {
                tracing::warn!(%error, "Idempotency-Key claim failed");
                return ApplyOutcome::Unavailable;
            }
        };
        let outcome = self.apply(event, user_id.clone()).await;
        if outcome.http_status() >= 500 {
            // Left in flight until it may be taken over (see the module's docs).
            return outcome;
        }
        let kept = idempotency::finish(
            &mut conn,
            &layout,
            &user_id,
            key.as_str(),
            &fingerprint,
            claimed_ms,
            outcome.http_status(),
            &outcome.body(),
        )
        .await;
        match kept {
            Ok(true) => {}
            Ok(false) => tracing::info!("an Idempotency-Key's claim was taken over before its answer came; the answer is not kept"),
            // The claim stays until it is taken over: a retry meanwhile answers 409, after
            // it the apply runs again (and finds the user's slot, if one was issued).
            Err(error) => tracing::warn!(%error, "an Idempotency-Key's answer could not be kept"),
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_as_structured_strings_or_bare() {
        let accepted = [
            (&br#""8e03978e-40d5-43e8-bc93-6894a57f9324""#[..], "8e03978e-40d5-43e8-bc93-6894a57f9324"),
            (b"8e03978e-40d5-43e8-bc93-6894a57f9324", "8e03978e-40d5-43e8-bc93-6894a57f9324"),
            (br#""with space and \"quote\" and \\""#, r#"with space and "quote" and \"#),
            (b"a", "a"),
        ];
        for (value, key) in accepted {
            assert_eq!(IdempotencyKey::parse(value).unwrap().as_str(), key, "{}", String::from_utf8_lossy(value));
        }
        let longest = "k".repeat(MAX_KEY_LEN);
        assert!(IdempotencyKey::parse(longest.as_bytes()).is_ok());
        let refused: [&[u8]; 10] = [
            b"",
            b"\"\"",
            b"two words",
            b"a,b",
            b"\"unterminated",
            br#""inner " quote""#,
            br#""bad \n escape""#,
            b"\"tab\there\"",
            "\"caf\u{e9}\"".as_bytes(),
            b"back\\slash",
        ];
        for value in refused {
            assert!(IdempotencyKey::parse(value).is_err(), "{}", String::from_utf8_lossy(value));
        }
        assert!(IdempotencyKey::parse("k".repeat(MAX_KEY_LEN + 1).as_bytes()).is_err());
    }

    #[test]
    fn the_fingerprint_is_the_bodys_sha256() {
        // sha256("") is well known.
        assert_eq!(fingerprint(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_ne!(fingerprint(br#"{"userId":"a"}"#), fingerprint(br#"{"userId":"b"}"#));
    }
}

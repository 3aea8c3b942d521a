//! Records signed by the api, so the consumer can tell a coupon a gate issued from one
//! produced by whoever can write to the topic, also while Redis cannot tell (an event
//! recovering after its Redis lost data, or whose configuration is missing).
//!
//! An HMAC-SHA256 over the record's fields under a key the api and the consumer share (a
//! Secret mounted as a file, `RECORD_KEYS_FILE`). The file holds one key per line,
//! `<id>=<base64 of at least 32 bytes>`; the first line signs, every line verifies: add the
//! new key as a second line and restart, move it first and restart, drop the old one once its
//! records are written. The consumer asks a signature only where Redis cannot tell
//! (`consumer::writer`), so a key it does not know yet never costs a coupon.

use std::collections::HashMap;
use std::path::Path;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::CouponRecord;

/// Fewest bytes a key may have: the MAC's own length.
pub const MIN_KEY_BYTES: usize = 32;
/// Longest key id.
const MAX_KEY_ID_LEN: usize = 32;
/// What the MAC covers besides the fields: the version of this layout.
const DOMAIN: &str = "coupon-record-v1";

/// The keys records are signed and verified with.
#[derive(Clone)]
pub struct RecordKeys {
    /// The first key of the file: the one that signs.
    signing: (String, Vec<u8>),
    verifying: HashMap<String, Vec<u8>>,
}

impl std::fmt::Debug for RecordKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&String> = self.verifying.keys().collect();
        ids.sort();
        f.debug_struct("RecordKeys").field("signing", &self.signing.0).field("verifying", &ids).finish()
    }
}

/// What a record's signature says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signature {
    /// Made with one of the keys: an api issued this record.
    Valid,
    /// None (an api without keys, or of a version before signing).
    Missing,
    /// There, but not made with any of the keys over these fields: forged or altered.
    Invalid(String),
}

impl RecordKeys {
    /// The keys of `text`, a key file's content.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut signing = None;
        let mut verifying = HashMap::new();
        for (number, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (id, encoded) = line.split_once('=').ok_or_else(|| format!("line {number}: not <id>=<base64 key>"))?;
            let (id, encoded) = (id.trim(), encoded.trim());
            if id.is_empty() || id.len() > MAX_KEY_ID_LEN || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err(format!("line {number}: a key id is 1 to {MAX_KEY_ID_LEN} letters, digits, '-' or '_'"));
            }
            let key = STANDARD.decode(encoded).map_err(|e| format!("line {number}: the key is not base64: {e}"))?;
            if key.len() < MIN_KEY_BYTES {
                return Err(format!("line {number}: key {id} has {} bytes, fewer than {MIN_KEY_BYTES}", key.len()));
            }
            if verifying.insert(id.to_owned(), key.clone()).is_some() {
                return Err(format!("line {number}: key id {id} appears twice"));
            }
            signing.get_or_insert((id.to_owned(), key));
        }
        let signing = signing.ok_or("no key in the file")?;
        Ok(Self { signing, verifying })
    }

    /// The keys of the file at `path` (`RECORD_KEYS_FILE`).
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("RECORD_KEYS_FILE {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("RECORD_KEYS_FILE {}: {e}", path.display()))
    }

    /// `record` with its `mac` set by the signing key.
    pub fn sign(&self, mut record: CouponRecord) -> CouponRecord {
        let (id, key) = &self.signing;
        let tag = mac(key, &record).finalize().into_bytes();
        record.mac = Some(format!("{id}:{}", URL_SAFE_NO_PAD.encode(tag)));
        record
    }

    /// What `record`'s `mac` says about it.
    pub fn verify(&self, record: &CouponRecord) -> Signature {
        let Some(signature) = &record.mac else { return Signature::Missing };
        let Some((id, encoded)) = signature.split_once(':') else {
            return Signature::Invalid("mac is not <key id>:<tag>".into());
        };
        let Some(key) = self.verifying.get(id) else { return Signature::Invalid(format!("mac names the unknown key {id:?}")) };
        let Ok(tag) = URL_SAFE_NO_PAD.decode(encoded) else { return Signature::Invalid("mac's tag is not base64url".into()) };
        match mac(key, record).verify_slice(&tag) {
            Ok(()) => Signature::Valid,
            Err(_) => Signature::Invalid(format!("mac does not verify under key {id}")),
        }
    }
}

/// The MAC over a record's fields, each on a line of its own (none may hold a newline: the
/// event key and user id are checked ASCII without spaces before a record is written), the
/// issue time as seconds and nanoseconds so that no formatting can differ. The ordinal
/// follows only when it is not 1, so a record of one coupon per user is signed as it
/// always was (and verifies on consumers from before ordinals).
fn mac(key: &[u8], record: &CouponRecord) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    let (seconds, nanos) = crate::time::unix_seconds_and_nanos(record.issued_at);
    let issued = format!("{seconds}.{nanos:09}");
    let ordinal = (record.ordinal != 1).then(|| format!("ordinal={}", record.ordinal));
    for field in [DOMAIN, &record.event, &record.user_id, &record.slot.to_string(), &issued].into_iter().chain(ordinal.as_deref()) {
        mac.update(field.as_bytes());
        mac.update(b"\n");
    }
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // 32 bytes
    const SECOND: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA="; // 32 bytes

    fn record() -> CouponRecord {
        CouponRecord {
            event: "shop/sale@7".into(),
            user_id: "u1".into(),
            slot: 3,
            ordinal: 1,
            issued_at: "2026-11-27T10:00:00.123456789Z".parse().unwrap(),
            mac: None,
        }
    }

    /// The tag is HMAC-SHA256 over `coupon-record-v1`, the event, the user, the slot and
    /// `seconds.nanoseconds`, one per line (computed apart from this code, with Python's hmac):
    /// records signed by any release verify in any other, whatever wrote the time.
    #[test]
    fn the_signature_of_a_known_record_is_fixed() {
        let keys = RecordKeys::parse(&format!("k1={FIRST}\n")).unwrap();
        const TAG: &str = "k1:X1g5YqYEU-m01D7YK80EXlxuZgGYn7Q85eIO6TQ0bzQ";
        assert_eq!(keys.sign(record()).mac.as_deref(), Some(TAG));
        let same_instant = CouponRecord { issued_at: "2026-11-27T19:00:00.123456789+09:00".parse().unwrap(), ..record() };
        assert_eq!(keys.sign(same_instant).mac.as_deref(), Some(TAG));
        // A second coupon of the user: `ordinal=2` on a line of its own after the time.
        const SECOND: &str = "k1:UVf6kf40yhE8zqPSGTuKrv81lLR_e5Ui_rhNIOfx8qA";
        assert_eq!(keys.sign(CouponRecord { ordinal: 2, ..record() }).mac.as_deref(), Some(SECOND));
    }

    #[test]
    fn a_signed_record_verifies_and_any_changed_field_does_not() {
        let keys = RecordKeys::parse(&format!("k1={FIRST}\n")).unwrap();
        let signed = keys.sign(record());
        assert!(signed.mac.as_deref().unwrap().starts_with("k1:"));
        assert_eq!(keys.verify(&signed), Signature::Valid);
        // Through JSON, as the consumer reads it.
        let back: CouponRecord = serde_json::from_slice(&serde_json::to_vec(&signed).unwrap()).unwrap();
        assert_eq!(keys.verify(&back), Signature::Valid);
        for altered in [
            CouponRecord { slot: 4, ..signed.clone() },
            CouponRecord { ordinal: 2, ..signed.clone() },
            CouponRecord { user_id: "u2".into(), ..signed.clone() },
            CouponRecord { event: "shop/sale@8".into(), ..signed.clone() },
            CouponRecord { issued_at: "2026-11-27T10:00:00.123456788Z".parse().unwrap(), ..signed.clone() },
        ] {
            assert!(matches!(keys.verify(&altered), Signature::Invalid(_)), "{altered:?}");
        }
        assert_eq!(keys.verify(&record()), Signature::Missing);
        let forged = CouponRecord { mac: Some(format!("k1:{}", URL_SAFE_NO_PAD.encode([0u8; 32]))), ..record() };
        assert!(matches!(keys.verify(&forged), Signature::Invalid(_)));
    }

    #[test]
    fn rotation_signs_with_the_first_key_and_verifies_with_every_key() {
        let old = RecordKeys::parse(&format!("old={FIRST}")).unwrap();
        let both = RecordKeys::parse(&format!("# rotating\nnew={SECOND}\nold={FIRST}\n")).unwrap();
        assert_eq!(both.verify(&old.sign(record())), Signature::Valid, "records of the old key still verify");
        assert!(both.sign(record()).mac.unwrap().starts_with("new:"));
        let unknown = RecordKeys::parse(&format!("other={SECOND}")).unwrap().sign(record());
        assert!(matches!(old.verify(&unknown), Signature::Invalid(reason) if reason.contains("unknown key")));
    }

    #[test]
    fn malformed_key_files_are_refused_with_the_line() {
        for (text, said) in [
            ("", "no key"),
            ("k1", "line 1"),
            ("k 1=abc", "key id"),
            (&format!("k1={FIRST}\nk2=c2hvcnQ="), "line 2: key k2 has 5 bytes"),
            (&format!("k1={FIRST}\nk1={SECOND}"), "appears twice"),
            ("k1=***", "not base64"),
        ] {
            let error = RecordKeys::parse(text).expect_err(text);
            assert!(error.contains(said), "{text:?}: {error}");
        }
    }
}

//! Pure handling of a batch: parsing and checking records.

use std::collections::{HashMap, HashSet};

use coupon_core::event::{validate_user_id, CouponRecord, EventKey, RecordKeys, Signature, MAX_PER_USER};

use crate::sql::{CouponRow, FailedRow, Position};

/// A record taken off the topic, owned so the batch outlives the consumer's buffers.
#[derive(Clone, Debug)]
pub struct RawRecord {
    pub position: Position,
    pub payload: Vec<u8>,
}

/// Years an `issuedAt` may fall in: every database stores them, and nothing outside them is
/// a coupon this system issued (a year -0001 made a bind panic on MySQL; one before 4713 BC
/// is refused by PostgreSQL).
const ISSUED_YEARS: std::ops::RangeInclusive<i32> = 1970..=9999;

/// Highest slot a record may carry: far above any limit (the CRD allows 100,000,000), far
/// below where slot arithmetic could overflow.
const MAX_SLOT: i64 = 1 << 40;

/// Parses and checks one record; the error is the reason stored in `failed_events`. Every
/// field is range-checked here, so nothing that reaches SQL can make a bind fail.
pub fn parse_record(payload: &[u8]) -> Result<CouponRow, String> {
    parse_signed(payload, None).map(|(row, _)| row)
}

/// As `parse_record`, and what the record's signature says under `keys` (`Missing` without
/// keys). A signature that does not verify does not refuse the record here: where Redis can
/// tell whether a gate issued it, Redis decides (a key the consumer does not know yet, in a
/// rotation, must not cost a genuine coupon); only where it cannot is the signature asked.
pub fn parse_signed(payload: &[u8], keys: Option<&RecordKeys>) -> Result<(CouponRow, Signature), String> {
    let record: CouponRecord = serde_json::from_slice(payload).map_err(|e| format!("not a coupon record: {e}"))?;
    record.event.parse::<EventKey>().map_err(|e| format!("bad event {:?}: {e}", record.event))?;
    validate_user_id(&record.user_id)?;
    if !(1..=MAX_SLOT).contains(&record.slot) {
        return Err(format!("slot {} is outside 1..={MAX_SLOT}", record.slot));
    }
    if !(1..=MAX_PER_USER).contains(&record.ordinal) {
        return Err(format!("ordinal {} is outside 1..={MAX_PER_USER}", record.ordinal));
    }
    if !ISSUED_YEARS.contains(&i32::from(record.issued_at.to_zoned(jiff::tz::TimeZone::UTC).year())) {
        return Err(format!("issuedAt {} is outside the years {ISSUED_YEARS:?}", record.issued_at));
    }
    let signature = keys.map_or(Signature::Missing, |keys| keys.verify(&record));
    let row = CouponRow {
        event: record.event,
        user_id: record.user_id,
        slot: record.slot,
        ordinal: record.ordinal,
        issued_at: record.issued_at,
        mac: record.mac,
    };
    Ok((row, signature))
}

/// What the signatures of a batch's coupons say, by position: those that verified, and why
/// the others that carry one do not.
#[derive(Debug, Default)]
pub struct Signatures {
    pub valid: HashSet<Position>,
    pub invalid: HashMap<Position, String>,
}

impl Signatures {
    /// Why nothing vouches for the coupon at `position`: `None` when its signature verified.
    pub fn not_vouched(&self, position: &Position) -> Option<String> {
        if self.valid.contains(position) {
            return None;
        }
        Some(self.invalid.get(position).map_or_else(|| "unsigned".to_owned(), |why| format!("its {why}")))
    }
}

/// A batch sorted into coupon rows and failures, and what the rows' signatures say.
pub struct SplitBatch {
    pub coupons: Vec<(CouponRow, Position)>,
    pub failures: Vec<FailedRow>,
    pub signatures: Signatures,
}

/// Sorts a batch into coupon rows and failures, checking signatures with `keys`.
pub fn split_batch(batch: &[RawRecord], keys: Option<&RecordKeys>) -> SplitBatch {
    let mut split = SplitBatch { coupons: Vec::with_capacity(batch.len()), failures: Vec::new(), signatures: Signatures::default() };
    for record in batch {
        let p = &record.position;
        match parse_signed(&record.payload, keys) {
            Ok((row, signature)) => {
                match signature {
                    Signature::Valid => {
                        split.signatures.valid.insert(p.clone());
                    }
                    Signature::Invalid(why) => {
                        tracing::warn!(topic = %p.topic, partition = p.partition, offset = p.offset, why, "a record's signature does not verify");
                        split.signatures.invalid.insert(p.clone(), why);
                    }
                    Signature::Missing => {}
                }
                split.coupons.push((row, p.clone()));
            }
            Err(reason) => split.failures.push(p.failed(record.payload.clone(), reason)),
        }
    }
    split
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(partition: i32, offset: i64, payload: &str) -> RawRecord {
        RawRecord { position: Position { topic: "t".into(), partition, offset }, payload: payload.as_bytes().to_vec() }
    }

    #[test]
    fn good_and_bad_records_are_split() {
        let good = r#"{"event":"shop/sale","userId":"u1","slot":3,"issuedAt":"2026-11-27T10:00:00Z"}"#;
        let batch = [
            raw(0, 5, good),
            raw(0, 6, "not json"),
            raw(1, 9, r#"{"event":"shop/sale","userId":"","slot":1,"issuedAt":"2026-11-27T10:00:00Z"}"#),
        ];
        let SplitBatch { coupons, failures, .. } = split_batch(&batch, None);
        assert_eq!(coupons.len(), 1);
        assert_eq!(coupons[0].0.slot, 3);
        assert_eq!(failures.len(), 2);
        assert!(failures[0].reason.contains("not a coupon record"), "{}", failures[0].reason);
        assert!(failures[1].reason.contains("userId"), "{}", failures[1].reason);
    }

    #[test]
    fn records_with_bad_fields_are_refused() {
        assert!(parse_record(br#"{"event":"nope","userId":"u","slot":1,"issuedAt":"2026-11-27T10:00:00Z"}"#).is_err());
        assert!(parse_record(br#"{"event":"a/b","userId":"u","slot":0,"issuedAt":"2026-11-27T10:00:00Z"}"#).is_err());
        assert!(parse_record(br#"{"event":"a/b","userId":"u","slot":1}"#).is_err());
        assert!(parse_record(br#"{"event":"a/b","userId":"u","slot":1,"issuedAt":"2026-11-27T10:00:00Z"}"#).is_ok());
        for year in ["-0001", "-5000", "+10000", "1969"] {
            let payload = format!(r#"{{"event":"a/b","userId":"u","slot":1,"issuedAt":"{year}-01-01T00:00:00Z"}}"#);
            let error = parse_record(payload.as_bytes()).expect_err(year);
            assert!(error.contains("not a coupon record") || error.contains("outside the years"), "{year}: {error}");
        }
        assert!(parse_record(b"{\"event\":\"a/b\",\"userId\":\"u\0\",\"slot\":1,\"issuedAt\":\"2026-11-27T10:00:00Z\"}").is_err());
    }

    #[test]
    fn with_keys_signatures_are_sorted_and_no_record_is_refused_for_its_signature_alone() {
        let keys = RecordKeys::parse("k1=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=").unwrap();
        let record = CouponRecord {
            event: "shop/sale".into(),
            user_id: "u1".into(),
            slot: 3,
            ordinal: 1,
            issued_at: "2026-11-27T10:00:00Z".parse().unwrap(),
            mac: None,
        };
        let signed = keys.sign(record.clone());
        let altered = CouponRecord { slot: 4, ..signed.clone() };
        let json = |r: &CouponRecord| String::from_utf8(serde_json::to_vec(r).unwrap()).unwrap();
        let batch = [raw(0, 1, &json(&signed)), raw(0, 2, &json(&altered)), raw(0, 3, &json(&record))];
        let split = split_batch(&batch, Some(&keys));
        assert_eq!(split.coupons.len(), 3, "Redis decides where it can");
        assert!(split.failures.is_empty());
        let (signed_at, altered_at, unsigned_at) = (&batch[0].position, &batch[1].position, &batch[2].position);
        assert_eq!(split.signatures.not_vouched(signed_at), None);
        assert!(split.signatures.not_vouched(altered_at).unwrap().contains("does not verify"));
        assert_eq!(split.signatures.not_vouched(unsigned_at).as_deref(), Some("unsigned"));
        // The signature is kept for the payload of a record not written.
        assert_eq!(split.coupons[0].0.mac, signed.mac);
        // Without keys nothing is vouched for.
        assert_eq!(split_batch(&batch, None).signatures.valid.len(), 0);
    }
}

//! Coupons into PostgreSQL by binary `COPY`, as the consumer could write them: the rows stream
//! into a temporary staging table in PostgreSQL's own binary format (no statement to parse, no
//! parameter per value), and one `INSERT … SELECT … ON CONFLICT DO NOTHING` moves them into
//! `coupons` with the same idempotence as the consumer's insert. Measured against the
//! consumer's multi-row insert it gains nothing on our schema (`docs/benchmarks.md`): each row's
//! cost is its three index entries and its foreign-key check, not the statement. It stays
//! here, measured in every run, rather than in the consumer.

use coupon_service::sql::{CouponRow, Position};

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01T00:00:00Z).
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Creates the staging table on this session if it is not there, without a notice either way.
const STAGE: &str = "DO $$ BEGIN \
     IF to_regclass('pg_temp.coupon_staging') IS NULL THEN \
       CREATE TEMP TABLE coupon_staging (event text, user_id text, slot int8, issued_at timestamptz) ON COMMIT DELETE ROWS; \
     END IF; END $$";

const COPY: &str = "COPY coupon_staging (event, user_id, slot, issued_at) FROM STDIN (FORMAT binary)";

const MOVE: &str = "INSERT INTO coupons (event, user_id, slot, issued_at) \
     SELECT event, user_id, slot, issued_at FROM coupon_staging ON CONFLICT DO NOTHING";

/// Inserts `coupons` into `coupons` within the connection's transaction (once per
/// transaction: the staging table empties at the commit), skipping rows that violate a unique
/// key; returns the rows inserted.
pub async fn insert_coupons(connection: &mut sqlx::PgConnection, coupons: &[(CouponRow, Position)]) -> Result<u64, sqlx::Error> {
    sqlx::query(STAGE).execute(&mut *connection).await?;
    let mut copy = connection.copy_in_raw(COPY).await?;
    if let Err(error) = copy.send(binary_rows(coupons)).await {
        let _ = copy.abort("the rows could not be sent").await;
        return Err(error);
    }
    copy.finish().await?;
    Ok(sqlx::query(MOVE).execute(&mut *connection).await?.rows_affected())
}

/// `chunk` in PostgreSQL's binary COPY format: a header, then per row the number of fields
/// and each field as its length and bytes (text as UTF-8, int8 big-endian, timestamptz as
/// microseconds since 2000-01-01, big-endian), then a trailer.
fn binary_rows(chunk: &[(CouponRow, Position)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(21 + chunk.iter().map(|(c, _)| 38 + c.event.len() + c.user_id.len()).sum::<usize>());
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0i32.to_be_bytes()); // flags
    out.extend_from_slice(&0i32.to_be_bytes()); // header extension
    for (coupon, _) in chunk {
        out.extend_from_slice(&4i16.to_be_bytes());
        for text in [coupon.event.as_bytes(), coupon.user_id.as_bytes()] {
            out.extend_from_slice(&(text.len() as i32).to_be_bytes());
            out.extend_from_slice(text);
        }
        out.extend_from_slice(&8i32.to_be_bytes());
        out.extend_from_slice(&coupon.slot.to_be_bytes());
        out.extend_from_slice(&8i32.to_be_bytes());
        out.extend_from_slice(&(coupon.issued_at.as_microsecond() - POSTGRES_EPOCH_MICROS).to_be_bytes());
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_in_the_binary_format() {
        let row = CouponRow {
            event: "a/b".into(),
            user_id: "u".into(),
            slot: 7,
            ordinal: 1,
            issued_at: "2000-01-01T00:00:01.5Z".parse().unwrap(),
            mac: None,
        };
        let bytes = binary_rows(&[(row, Position { topic: "t".into(), partition: 0, offset: 0 })]);
        let mut expected = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
        expected.extend_from_slice(&[0, 4, 0, 0, 0, 3, b'a', b'/', b'b', 0, 0, 0, 1, b'u']);
        expected.extend_from_slice(&[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 7]);
        expected.extend_from_slice(&[0, 0, 0, 8]);
        expected.extend_from_slice(&1_500_000i64.to_be_bytes());
        expected.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(bytes, expected);
    }
}

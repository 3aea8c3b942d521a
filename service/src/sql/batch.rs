//! Writing a batch of records: coupon rows and failed records in one transaction, and the
//! fall-back, record by record, when the database refuses the batch.

use sqlx::QueryBuilder;

use super::{CouponRow, FailedRow, Position, Store, INSERT_CHUNK};

/// Bytes of failed records' payloads and reasons per INSERT: far below the smallest
/// `max_allowed_packet` of the MySQL and MariaDB versions in use (4 MiB), so that a batch of
/// large poison records never makes a statement the server refuses (and drops the
/// connection for). A record larger than this goes alone.
const FAILED_STATEMENT_BYTES: usize = 1 << 20;

/// Whether the database refused the data itself (a value out of range, a constraint, an
/// encoding), as opposed to being unreachable, overloaded or in a deadlock: a refused
/// record goes to `failed_events`, anything else is retried.
pub fn is_data_error(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = error else { return matches!(error, sqlx::Error::Encode(_)) };
    if !matches!(db.kind(), sqlx::error::ErrorKind::Other) {
        return true; // unique, foreign key, not null, check
    }
    if let Some(mysql) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        // Incorrect string value, incorrect datetime, out of range, too long, check.
        return matches!(mysql.number(), 1264 | 1292 | 1366 | 1406 | 1411 | 3819) || mysql.code().is_some_and(|c| c.starts_with("22"));
    }
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        // SQLITE_TOOBIG, SQLITE_CONSTRAINT, SQLITE_MISMATCH and their extended codes.
        let code: i32 = db.code().and_then(|c| c.parse().ok()).unwrap_or(0);
        return matches!(code & 0xff, 18..=20);
    }
    db.code().is_some_and(|c| c.starts_with("22") || c.starts_with("23"))
}

impl Store {
    /// Writes one batch: the coupons (duplicates of rows already there are skipped, which
    /// makes redelivery harmless) and the failed records, in one transaction. Coupons that
    /// were neither inserted nor already present with the same user and slot conflict with
    /// another row and are recorded in `failed_events` in the same transaction. If the
    /// database refuses the data of the batch, its records are written one by one and each
    /// refused one goes to `failed_events` with the database's reason, so one bad record
    /// never holds the partition.
    ///
    /// A batch with failed records is also written one by one after any other error while
    /// the database still answers: what such a record holds can make the server refuse the
    /// statement in ways that are not data errors (a packet too large closes the connection).
    pub async fn write_batch(&self, coupons: &[(CouponRow, Position)], failures: &[FailedRow]) -> Result<BatchOutcome, sqlx::Error> {
        match self.write_in_one_transaction(coupons, failures).await {
            Err(error) if is_data_error(&error) => {
                tracing::warn!(%error, records = coupons.len() + failures.len(), "the database refused a batch; writing its records one by one");
                self.write_one_by_one(coupons, failures).await
            }
            Err(error) if !failures.is_empty() && self.ping().await.is_ok() => {
                tracing::warn!(%error, failed = failures.len(), "a batch with failed records was not written; writing the failed records apart");
                let outcome = self.write_in_one_transaction(coupons, &[]).await?;
                // Coupons that clashed went to failed_events in that transaction already.
                self.write_failures_one_by_one(failures).await?;
                Ok(outcome)
            }
            other => other,
        }
    }

    async fn write_one_by_one(&self, coupons: &[(CouponRow, Position)], failures: &[FailedRow]) -> Result<BatchOutcome, sqlx::Error> {
        let mut outcome = BatchOutcome::default();
        let mut failed = Vec::new();
        for coupon in coupons {
            match self.write_in_one_transaction(std::slice::from_ref(coupon), &[]).await {
                Ok(one) => outcome.absorb(one),
                Err(error) if is_data_error(&error) => {
                    failed.push(coupon.1.failed(coupon.0.payload(), format!("refused by the database: {error}")))
                }
                Err(error) => return Err(error),
            }
        }
        self.write_failures_one_by_one(failures).await?;
        self.write_failures_one_by_one(&failed).await?;
        outcome.conflicts.extend(failed);
        Ok(outcome)
    }

    /// Writes failed records one transaction each. One the database refuses, or still will
    /// not take on a second try while it answers otherwise (a packet too large for it), is
    /// kept as its position and the reason, without its payload.
    async fn write_failures_one_by_one(&self, failures: &[FailedRow]) -> Result<(), sqlx::Error> {
        for failure in failures {
            let mut tries = 0;
            loop {
                tries += 1;
                match self.write_in_one_transaction(&[], std::slice::from_ref(failure)).await {
                    Ok(_) => break,
                    Err(error) if is_data_error(&error) || (tries >= 2 && self.ping().await.is_ok()) => {
                        let position = Position { topic: failure.topic.clone(), partition: failure.partition, offset: failure.offset };
                        let reason = format!("{}; payload of {} bytes not storable: {error}", failure.reason, failure.payload.len());
                        self.write_in_one_transaction(&[], &[position.failed(Vec::new(), reason)]).await?;
                        break;
                    }
                    // A passing fault (a deadlock, a lock timeout) is tried again once.
                    Err(error) if tries < 2 && self.ping().await.is_ok() => {
                        tracing::warn!(%error, offset = failure.offset, "a failed record was not written; trying it again");
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(())
    }

    async fn write_in_one_transaction(
        &self,
        coupons: &[(CouponRow, Position)],
        failures: &[FailedRow],
    ) -> Result<BatchOutcome, sqlx::Error> {
        let (coupon_head, coupon_tail) = self.insert_ignoring_duplicates("coupons (event, user_id, slot, ordinal, issued_at)");
        let (failed_head, failed_tail) =
            self.insert_ignoring_duplicates("failed_events (topic, kafka_partition, kafka_offset, payload, reason)");
        let clashing = format!("SELECT {}, slot, ordinal FROM coupons WHERE event = ", self.text("user_id"));
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut inserted = 0u64;
            for chunk in coupons.chunks(INSERT_CHUNK) {
                inserted += InsertCoupons::insert_coupons(&mut *tx, chunk, &coupon_head, coupon_tail).await?;
            }
            let mut conflicts = Vec::new();
            let mut written = Vec::with_capacity(coupons.len());
            if inserted < coupons.len() as u64 {
                for (coupon, position) in coupons {
                    // The rows this one clashes with: its slot's, and the user's of its ordinal.
                    let mut find = QueryBuilder::new(&clashing);
                    find.push_bind(&coupon.event).push(" AND (slot = ").push_bind(coupon.slot);
                    find.push(" OR (user_id = ").push_bind(&coupon.user_id).push(" AND ordinal = ").push_bind(coupon.ordinal as i32).push("))");
                    let rows: Vec<(String, i64, i32)> = find.build_query_as().fetch_all(&mut *tx).await?;
                    if rows.iter().any(|(user, slot, ordinal)| *user == coupon.user_id && *slot == coupon.slot && i64::from(*ordinal) == coupon.ordinal) {
                        written.push(coupon.clone());
                    } else {
                        let reason = match rows.iter().find(|(user, _, ordinal)| *user == coupon.user_id && i64::from(*ordinal) == coupon.ordinal) {
                            Some((_, other, 1)) => format!("user already holds slot {other} of this event"),
                            Some((_, other, ordinal)) => format!("user already holds slot {other} of this event as their coupon {ordinal}"),
                            None => "slot already taken by another user, or no such slot for the event".to_owned(),
                        };
                        conflicts.push(position.failed(coupon.payload(), reason));
                    }
                }
            } else {
                written.extend(coupons.iter().map(|(coupon, _)| coupon.clone()));
            }
            for chunk in failed_statements(failures.iter().chain(conflicts.iter())) {
                let mut query = QueryBuilder::new(&failed_head);
                query.push_values(chunk, |mut row, failed| {
                    row.push_bind(&failed.topic).push_bind(failed.partition).push_bind(failed.offset).push_bind(&failed.payload).push_bind(&failed.reason);
                });
                query.push(failed_tail);
                query.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(BatchOutcome { inserted, conflicts, written })
        })
    }
}

/// The multi-row coupon INSERT, per dialect. PostgreSQL binds four arrays and UNNESTs them
/// (four parameters and one cached plan whatever the batch size); the others bind a
/// VALUES list.
trait InsertCoupons {
    /// Inserts, skipping rows that violate a unique key; returns the rows inserted.
    async fn insert_coupons(&mut self, chunk: &[(CouponRow, Position)], head: &str, tail: &str) -> Result<u64, sqlx::Error>;
}

impl InsertCoupons for sqlx::PgConnection {
    async fn insert_coupons(&mut self, chunk: &[(CouponRow, Position)], _head: &str, _tail: &str) -> Result<u64, sqlx::Error> {
        let events: Vec<&str> = chunk.iter().map(|(c, _)| c.event.as_str()).collect();
        let users: Vec<&str> = chunk.iter().map(|(c, _)| c.user_id.as_str()).collect();
        let slots: Vec<i64> = chunk.iter().map(|(c, _)| c.slot).collect();
        let ordinals: Vec<i32> = chunk.iter().map(|(c, _)| c.ordinal as i32).collect();
        let issued: Vec<_> = chunk.iter().map(|(c, _)| super::sql_timestamp(c.issued_at)).collect();
        let result = sqlx::query(
            "INSERT INTO coupons (event, user_id, slot, ordinal, issued_at) \
             SELECT * FROM UNNEST($1::varchar[], $2::varchar[], $3::int8[], $4::int4[], $5::timestamptz[]) ON CONFLICT DO NOTHING",
        )
        .bind(events)
        .bind(users)
        .bind(slots)
        .bind(ordinals)
        .bind(issued)
        .execute(self)
        .await?;
        Ok(result.rows_affected())
    }
}

macro_rules! insert_coupons_with_values_list {
    ($connection:ty) => {
        impl InsertCoupons for $connection {
            async fn insert_coupons(&mut self, chunk: &[(CouponRow, Position)], head: &str, tail: &str) -> Result<u64, sqlx::Error> {
                let mut query = QueryBuilder::new(head);
                query.push_values(chunk, |mut row, (coupon, _)| {
                    row.push_bind(&coupon.event)
                        .push_bind(&coupon.user_id)
                        .push_bind(coupon.slot)
                        .push_bind(coupon.ordinal as i32)
                        .push_bind(super::sql_timestamp(coupon.issued_at));
                });
                query.push(tail);
                Ok(query.build().execute(self).await?.rows_affected())
            }
        }
    };
}

insert_coupons_with_values_list!(sqlx::MySqlConnection);
insert_coupons_with_values_list!(sqlx::SqliteConnection);

/// Failed records in groups of at most `INSERT_CHUNK` rows and `FAILED_STATEMENT_BYTES`
/// bytes (a record larger than that alone): one INSERT each.
fn failed_statements<'a>(failures: impl Iterator<Item = &'a FailedRow>) -> Vec<Vec<&'a FailedRow>> {
    let mut statements: Vec<Vec<&FailedRow>> = Vec::new();
    let mut bytes = 0;
    for failure in failures {
        let size = failure.payload.len() + failure.reason.len();
        match statements.last_mut() {
            Some(current) if current.len() < INSERT_CHUNK && bytes + size <= FAILED_STATEMENT_BYTES => {
                current.push(failure);
                bytes += size;
            }
            _ => {
                statements.push(vec![failure]);
                bytes = size;
            }
        }
    }
    statements
}

/// What a batch did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// New coupon rows.
    pub inserted: u64,
    /// Records that clashed with other rows, or that the database refused, and went to
    /// `failed_events`.
    pub conflicts: Vec<FailedRow>,
    /// Coupons whose row now exists (inserted, or already there with the same user and slot).
    pub written: Vec<CouponRow>,
}

impl BatchOutcome {
    fn absorb(&mut self, other: BatchOutcome) {
        self.inserted += other.inserted;
        self.conflicts.extend(other.conflicts);
        self.written.extend(other.written);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(bytes: usize) -> FailedRow {
        FailedRow { topic: "t".into(), partition: 0, offset: 0, payload: vec![b'x'; bytes], reason: String::new() }
    }

    #[test]
    fn failed_records_are_grouped_by_rows_and_bytes() {
        let sizes = |failures: &[FailedRow]| -> Vec<usize> { failed_statements(failures.iter()).iter().map(Vec::len).collect() };
        assert_eq!(sizes(&vec![failure(10); 2500]), vec![1000, 1000, 500]);
        assert_eq!(sizes(&vec![failure(900_000); 5]), vec![1, 1, 1, 1, 1], "two would pass the byte bound");
        assert_eq!(sizes(&[failure(100), failure(3 << 20), failure(100)]), vec![1, 1, 1], "a large record goes alone");
        assert_eq!(sizes(&vec![failure(300_000); 7]), vec![3, 3, 1]);
        assert!(failed_statements(std::iter::empty()).is_empty());
    }
}

//! SQL storage of issued coupons and failed records, on PostgreSQL, MySQL/MariaDB or SQLite
//! (chosen by the `DATABASE_URL` scheme). The same statements serve all three; only the
//! "ignore duplicates" clause differs per dialect.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::QueryBuilder;

/// Rows per multi-row INSERT; keeps every dialect well under its bind-parameter limit.
const INSERT_CHUNK: usize = 1000;

/// A connection pool to one of the supported databases.
#[derive(Clone, Debug)]
pub enum Store {
    Postgres(PgPool),
    MySql(MySqlPool),
    Sqlite(SqlitePool),
}

/// Runs the same body against whichever pool the store holds.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            Store::Postgres($pool) => $body,
            Store::MySql($pool) => $body,
            Store::Sqlite($pool) => $body,
        }
    };
}

/// A coupon on its way into the `coupons` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CouponRow {
    pub event: String,
    pub user_id: String,
    pub slot: i64,
    pub issued_at: DateTime<Utc>,
}

/// A record that could not become a coupon row, and why. The payload is kept byte for
/// byte (a binary column), whatever it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedRow {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub payload: Vec<u8>,
    pub reason: String,
}

/// Longest reason stored; longer ones are cut.
const MAX_REASON_CHARS: usize = 1000;

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
    /// Connects once; callers retry with backoff. `mariadb://` is accepted as `mysql://`.
    /// Whether `url` names a database the consumer can write to, by its scheme: checked when a
    /// process starts, so that a URL of another ecosystem (`jdbc:`, `mysql+pymysql:`) or a
    /// typo is refused at once with what would be taken, never retried as an outage.
    pub fn check_url(url: &str) -> Result<(), String> {
        const ACCEPTED: [&str; 5] = ["postgres://", "postgresql://", "mysql://", "mariadb://", "sqlite:"];
        if ACCEPTED.iter().any(|scheme| url.starts_with(scheme)) {
            return Ok(());
        }
        Err(format!(
            "DATABASE_URL {:?} has a scheme the consumer does not take: use postgres://USER:PASSWORD@HOST:5432/DB, \
             mysql:// or mariadb://USER:PASSWORD@HOST:3306/DB, or sqlite:PATH",
            coupon_core::secrets::redact_url(url)
        ))
    }

    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        let acquire = Duration::from_secs(5);
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new().max_connections(8).acquire_timeout(acquire).connect(url).await?;
            Ok(Self::Postgres(pool))
        } else if let Some(rest) = url.strip_prefix("mariadb://") {
            let url = format!("mysql://{rest}");
            let pool = MySqlPoolOptions::new().max_connections(8).acquire_timeout(acquire).connect(&url).await?;
            Ok(Self::MySql(pool))
        } else if url.starts_with("mysql://") {
            let pool = MySqlPoolOptions::new().max_connections(8).acquire_timeout(acquire).connect(url).await?;
            Ok(Self::MySql(pool))
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new().max_connections(4).acquire_timeout(acquire).connect_with(options).await?;
            Ok(Self::Sqlite(pool))
        } else {
            Err(sqlx::Error::Configuration(
                format!(
                    "unsupported DATABASE_URL scheme in {:?}: use postgres://, mysql://, mariadb:// or sqlite:",
                    coupon_core::secrets::redact_url(url)
                )
                .into(),
            ))
        }
    }

    pub fn dialect(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::MySql(_) => "mysql",
            Self::Sqlite(_) => "sqlite",
        }
    }

    /// Applies the migrations in `service/src/sql/migrations/<dialect>`.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        match self {
            Self::Postgres(pool) => sqlx::migrate!("./src/sql/migrations/postgres").run(pool).await,
            Self::MySql(pool) => sqlx::migrate!("./src/sql/migrations/mysql").run(pool).await,
            Self::Sqlite(pool) => sqlx::migrate!("./src/sql/migrations/sqlite").run(pool).await,
        }
    }

    /// Cheap liveness probe for readiness.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        on_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()))
    }

    /// Translates `$1`-style placeholders (PostgreSQL, also accepted by SQLite) to MySQL's `?`.
    fn sql<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        match self {
            Self::MySql(_) => {
                let mut out = String::with_capacity(text.len());
                let mut chars = text.chars().peekable();
                while let Some(c) = chars.next() {
                    if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
                        while chars.peek().is_some_and(char::is_ascii_digit) {
                            chars.next();
                        }
                        out.push('?');
                    } else {
                        out.push(c);
                    }
                }
                out.into()
            }
            _ => text.into(),
        }
    }

    /// A column with a binary collation read as text. MySQL/MariaDB ids are `utf8mb4_bin` (so
    /// `Bob` and `bob` differ), which sqlx reports as VARBINARY and refuses to decode into a
    /// `String`; the cast gives it back its text type.
    fn text(&self, column: &str) -> String {
        match self {
            Self::MySql(_) => format!("CAST({column} AS CHAR)"),
            _ => column.to_owned(),
        }
    }

    /// `INSERT` that skips rows violating a unique key, per dialect: the statement start and
    /// the clause after the values.
    fn insert_ignoring_duplicates(&self, table_and_columns: &str) -> (String, &'static str) {
        match self {
            Self::MySql(_) => (format!("INSERT IGNORE INTO {table_and_columns} "), ""),
            _ => (format!("INSERT INTO {table_and_columns} "), " ON CONFLICT DO NOTHING"),
        }
    }

    /// Highest slot row of the event (0 if none): the limit the database enforces.
    pub async fn slot_capacity(&self, event: &str) -> Result<i64, sqlx::Error> {
        let sql = self.sql("SELECT MAX(slot) FROM coupon_slots WHERE event = $1");
        on_pool!(self, pool => {
            let max: Option<i64> = sqlx::query_scalar(&sql).bind(event).fetch_one(pool).await?;
            Ok(max.unwrap_or(0))
        })
    }

    /// Makes sure slots `1..=limit` exist for the event. Slots are never removed, so a
    /// raised limit adds rows and a lowered one changes nothing.
    pub async fn ensure_slots(&self, event: &str, limit: i64) -> Result<(), sqlx::Error> {
        let (head, tail) = self.insert_ignoring_duplicates("coupon_slots (event, slot)");
        let mut next = self.slot_capacity(event).await? + 1;
        while next <= limit {
            let last = (next + INSERT_CHUNK as i64 - 1).min(limit);
            on_pool!(self, pool => {
                let mut query = QueryBuilder::new(&head);
                query.push_values(next..=last, |mut row, slot| {
                    row.push_bind(event).push_bind(slot);
                });
                query.push(tail);
                query.build().execute(pool).await?;
            });
            next = last + 1;
        }
        Ok(())
    }

    /// Writes one batch: the coupons (duplicates of rows already there are skipped, which
    /// makes redelivery harmless) and the failed records, in one transaction. Coupons that
    /// were neither inserted nor already present with the same user and slot conflict with
    /// another row and are recorded in `failed_events` in the same transaction. If the
    /// database refuses the data of the batch, its records are written one by one and each
    /// refused one goes to `failed_events` with the database's reason, so one bad record
    /// never holds the partition.
    pub async fn write_batch(&self, coupons: &[(CouponRow, Position)], failures: &[FailedRow]) -> Result<BatchOutcome, sqlx::Error> {
        match self.write_in_one_transaction(coupons, failures).await {
            Err(error) if is_data_error(&error) => {
                tracing::warn!(%error, records = coupons.len() + failures.len(), "the database refused a batch; writing its records one by one");
                self.write_one_by_one(coupons, failures).await
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
                    failed.push(coupon.1.failed(coupon_payload(&coupon.0), format!("refused by the database: {error}")))
                }
                Err(error) => return Err(error),
            }
        }
        for failure in failures.iter().chain(failed.iter()) {
            match self.write_in_one_transaction(&[], std::slice::from_ref(failure)).await {
                Ok(_) => {}
                Err(error) if is_data_error(&error) => {
                    // Even the failure row is refused: keep its position and the reason only.
                    let bare = FailedRow { payload: Vec::new(), reason: format!("payload not storable: {error}"), ..failure.clone() };
                    self.write_in_one_transaction(&[], &[bare]).await?;
                }
                Err(error) => return Err(error),
            }
        }
        outcome.conflicts.extend(failed);
        Ok(outcome)
    }

    async fn write_in_one_transaction(
        &self,
        coupons: &[(CouponRow, Position)],
        failures: &[FailedRow],
    ) -> Result<BatchOutcome, sqlx::Error> {
        let (coupon_head, coupon_tail) = self.insert_ignoring_duplicates("coupons (event, user_id, slot, issued_at)");
        let (failed_head, failed_tail) =
            self.insert_ignoring_duplicates("failed_events (topic, kafka_partition, kafka_offset, payload, reason)");
        let find_sql = self.sql("SELECT slot FROM coupons WHERE event = $1 AND user_id = $2");
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
                    let slot: Option<i64> = sqlx::query_scalar(&find_sql).bind(&coupon.event).bind(&coupon.user_id).fetch_optional(&mut *tx).await?;
                    if slot == Some(coupon.slot) {
                        written.push(coupon.clone());
                    } else {
                        conflicts.push(position.failed(
                            coupon_payload(coupon),
                            match slot {
                                Some(other) => format!("user already holds slot {other} of this event"),
                                None => "slot already taken by another user, or no such slot for the event".to_owned(),
                            },
                        ));
                    }
                }
            } else {
                written.extend(coupons.iter().map(|(coupon, _)| coupon.clone()));
            }
            for chunk in failures.iter().chain(conflicts.iter()).collect::<Vec<_>>().chunks(INSERT_CHUNK) {
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

    /// Highest slot with a row (0 if none).
    pub async fn max_coupon_slot(&self, event: &str) -> Result<i64, sqlx::Error> {
        let sql = self.sql("SELECT MAX(slot) FROM coupons WHERE event = $1");
        on_pool!(self, pool => {
            let max: Option<i64> = sqlx::query_scalar(&sql).bind(event).fetch_one(pool).await?;
            Ok(max.unwrap_or(0))
        })
    }

    /// Up to `limit` coupons `(user_id, slot)` of an event with a slot above `after`, by slot:
    /// one page of a restore, so memory stays bounded whatever the event's size.
    pub async fn coupons_after(&self, event: &str, after: i64, limit: i64) -> Result<Vec<(String, i64)>, sqlx::Error> {
        let text = format!("SELECT {}, slot FROM coupons WHERE event = $1 AND slot > $2 ORDER BY slot LIMIT $3", self.text("user_id"));
        let sql = self.sql(&text);
        on_pool!(self, pool => sqlx::query_as(&sql).bind(event).bind(after).bind(limit).fetch_all(pool).await)
    }

    /// The rows of an event that hold `user_id` or `slot` (at most two): what healing needs
    /// to know about one entry.
    pub async fn rows_of_user_or_slot(&self, event: &str, user_id: &str, slot: i64) -> Result<Vec<(String, i64)>, sqlx::Error> {
        let text = format!("SELECT {}, slot FROM coupons WHERE event = $1 AND (user_id = $2 OR slot = $3)", self.text("user_id"));
        let sql = self.sql(&text);
        on_pool!(self, pool => sqlx::query_as(&sql).bind(event).bind(user_id).bind(slot).fetch_all(pool).await)
    }

    /// Every event key SQL holds coupons under for the event `id` (`<namespace>/<name>`):
    /// the key without an incarnation and each `<id>@<incarnation>`, with their coupons,
    /// the most recently written first. How `event create` tells an event Redis lost from a
    /// new one. (`id` holds no LIKE wildcard: namespaces and names are `[a-z0-9.-]`.)
    pub async fn coupon_keys_of(&self, id: &str) -> Result<Vec<(String, i64)>, sqlx::Error> {
        let text = format!(
            "SELECT {}, COUNT(*) FROM coupons WHERE event = $1 OR event LIKE $2 GROUP BY event ORDER BY MAX(id) DESC",
            self.text("event")
        );
        let sql = self.sql(&text);
        let incarnations = format!("{id}@%");
        on_pool!(self, pool => sqlx::query_as(&sql).bind(id).bind(&incarnations).fetch_all(pool).await)
    }

    /// Coupons of an event.
    pub async fn count_coupons(&self, event: &str) -> Result<i64, sqlx::Error> {
        let sql = self.sql("SELECT COUNT(*) FROM coupons WHERE event = $1");
        on_pool!(self, pool => sqlx::query_scalar(&sql).bind(event).fetch_one(pool).await)
    }

    /// `(user_id, slot)` of every coupon of an event, by slot.
    pub async fn coupons(&self, event: &str) -> Result<Vec<(String, i64)>, sqlx::Error> {
        let text = format!("SELECT {}, slot FROM coupons WHERE event = $1 ORDER BY slot", self.text("user_id"));
        let sql = self.sql(&text);
        on_pool!(self, pool => sqlx::query_as(&sql).bind(event).fetch_all(pool).await)
    }

    /// Failed records of a topic, by position.
    pub async fn failed_events(&self, topic: &str) -> Result<Vec<FailedRow>, sqlx::Error> {
        let text = format!(
            "SELECT {}, kafka_partition, kafka_offset, payload, reason FROM failed_events WHERE topic = $1 ORDER BY kafka_partition, kafka_offset",
            self.text("topic")
        );
        let sql = self.sql(&text);
        on_pool!(self, pool => {
            let rows: Vec<(String, i32, i64, Vec<u8>, String)> = sqlx::query_as(&sql).bind(topic).fetch_all(pool).await?;
            Ok(rows.into_iter().map(|(topic, partition, offset, payload, reason)| FailedRow { topic, partition, offset, payload, reason }).collect())
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
        let issued: Vec<DateTime<Utc>> = chunk.iter().map(|(c, _)| c.issued_at).collect();
        let result = sqlx::query(
            "INSERT INTO coupons (event, user_id, slot, issued_at) \
             SELECT * FROM UNNEST($1::varchar[], $2::varchar[], $3::int8[], $4::timestamptz[]) ON CONFLICT DO NOTHING",
        )
        .bind(events)
        .bind(users)
        .bind(slots)
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
                    row.push_bind(&coupon.event).push_bind(&coupon.user_id).push_bind(coupon.slot).push_bind(coupon.issued_at);
                });
                query.push(tail);
                Ok(query.build().execute(self).await?.rows_affected())
            }
        }
    };
}

insert_coupons_with_values_list!(sqlx::MySqlConnection);
insert_coupons_with_values_list!(sqlx::SqliteConnection);

/// Where a record came from on the topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl Position {
    /// The failure row of the record at this position. The reason is kept printable and
    /// bounded, since it may quote the record.
    pub fn failed(&self, payload: impl Into<Vec<u8>>, reason: String) -> FailedRow {
        let reason: String = reason.chars().map(|c| if c.is_control() { '?' } else { c }).take(MAX_REASON_CHARS).collect();
        FailedRow { topic: self.topic.clone(), partition: self.partition, offset: self.offset, payload: payload.into(), reason }
    }
}

/// The record of a coupon row, as the failure payload of a record that parsed but was not
/// written.
fn coupon_payload(coupon: &CouponRow) -> Vec<u8> {
    serde_json::to_vec(&coupon_core::event::CouponRecord {
        event: coupon.event.clone(),
        user_id: coupon.user_id.clone(),
        slot: coupon.slot,
        issued_at: coupon.issued_at,
    })
    .unwrap_or_default()
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

    #[tokio::test]
    async fn mysql_gets_question_mark_placeholders() {
        let store = Store::MySql(MySqlPoolOptions::new().connect_lazy("mysql://root@127.0.0.1/test").unwrap());
        assert_eq!(store.sql("a = $1 AND b = $12, '$'"), "a = ? AND b = ?, '$'");
        let lite = Store::Sqlite(SqlitePoolOptions::new().connect_lazy("sqlite::memory:").unwrap());
        assert_eq!(lite.sql("a = $1"), "a = $1");
    }
}

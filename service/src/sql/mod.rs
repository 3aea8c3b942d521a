//! SQL storage of issued coupons and failed records, on PostgreSQL, MySQL/MariaDB or SQLite
//! (chosen by the `DATABASE_URL` scheme). The same statements serve all three, built with
//! sqlx's `QueryBuilder`, which writes each dialect's own placeholders; only the "ignore
//! duplicates" clause and PostgreSQL's array insert differ per dialect.

use std::str::FromStr;
use std::time::Duration;

use jiff::Timestamp;
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

mod batch;
pub use batch::{is_data_error, BatchOutcome};

/// A coupon on its way into the `coupons` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CouponRow {
    pub event: String,
    pub user_id: String,
    pub slot: i64,
    /// Which of the user's coupons of the event (1 up to its `per_user`): unique per user.
    pub ordinal: i64,
    pub issued_at: Timestamp,
    /// The record's signature, kept for the payload of a record not written (never stored
    /// with the coupon).
    pub mac: Option<String>,
}

impl CouponRow {
    /// The record of this coupon, as the failure payload of a record that parsed but was not
    /// written.
    pub fn payload(&self) -> Vec<u8> {
        serde_json::to_vec(&coupon_core::event::CouponRecord {
            event: self.event.clone(),
            user_id: self.user_id.clone(),
            slot: self.slot,
            ordinal: 1,
            issued_at: self.issued_at,
            mac: self.mac.clone(),
        })
        .unwrap_or_default()
    }
}

/// `at` as sqlx binds a timestamp: chrono is kept only here, at the SQL boundary, because
/// sqlx encodes chrono's type for all three dialects and no jiff type yet.
pub fn sql_timestamp(at: Timestamp) -> chrono::DateTime<chrono::Utc> {
    let (seconds, nanos) = coupon_core::time::unix_seconds_and_nanos(at);
    chrono::DateTime::from_timestamp(seconds, nanos).expect("jiff's years (±9999) lie within chrono's")
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
        on_pool!(self, pool => {
            let mut query = QueryBuilder::new("SELECT MAX(slot) FROM coupon_slots WHERE event = ");
            query.push_bind(event);
            let max: Option<i64> = query.build_query_scalar().fetch_one(pool).await?;
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

    /// Highest slot with a row (0 if none).
    pub async fn max_coupon_slot(&self, event: &str) -> Result<i64, sqlx::Error> {
        on_pool!(self, pool => {
            let mut query = QueryBuilder::new("SELECT MAX(slot) FROM coupons WHERE event = ");
            query.push_bind(event);
            let max: Option<i64> = query.build_query_scalar().fetch_one(pool).await?;
            Ok(max.unwrap_or(0))
        })
    }

    /// Up to `limit` coupons `(user_id, slot, ordinal)` of an event with a slot above
    /// `after`, by slot: one page of a restore, so memory stays bounded whatever the event's
    /// size.
    pub async fn coupons_after(&self, event: &str, after: i64, limit: i64) -> Result<Vec<(String, i64, i64)>, sqlx::Error> {
        let select = format!("SELECT {}, slot, ordinal FROM coupons WHERE event = ", self.text("user_id"));
        let rows: Vec<(String, i64, i32)> = on_pool!(self, pool => {
            let mut query = QueryBuilder::new(&select);
            query.push_bind(event).push(" AND slot > ").push_bind(after).push(" ORDER BY slot LIMIT ").push_bind(limit);
            query.build_query_as().fetch_all(pool).await?
        });
        Ok(rows.into_iter().map(|(user, slot, ordinal)| (user, slot, i64::from(ordinal))).collect())
    }

    /// The rows of an event that hold `user_id` or `slot` (at most two): what healing needs
    /// to know about one entry.
    pub async fn rows_of_user_or_slot(&self, event: &str, user_id: &str, slot: i64) -> Result<Vec<(String, i64)>, sqlx::Error> {
        let select = format!("SELECT {}, slot FROM coupons WHERE event = ", self.text("user_id"));
        on_pool!(self, pool => {
            let mut query = QueryBuilder::new(&select);
            query.push_bind(event).push(" AND (user_id = ").push_bind(user_id).push(" OR slot = ").push_bind(slot).push(")");
            query.build_query_as().fetch_all(pool).await
        })
    }

    /// Every event key SQL holds coupons under for the event `id` (`<namespace>/<name>`):
    /// the key without an incarnation and each `<id>@<incarnation>`, with their coupons,
    /// the most recently written first. How `event create` tells an event Redis lost from a
    /// new one. (`id` holds no LIKE wildcard: namespaces and names are `[a-z0-9.-]`.)
    pub async fn coupon_keys_of(&self, id: &str) -> Result<Vec<(String, i64)>, sqlx::Error> {
        let select = format!("SELECT {}, COUNT(*) FROM coupons WHERE event = ", self.text("event"));
        let incarnations = format!("{id}@%");
        on_pool!(self, pool => {
            let mut query = QueryBuilder::new(&select);
            query.push_bind(id).push(" OR event LIKE ").push_bind(&incarnations).push(" GROUP BY event ORDER BY MAX(id) DESC");
            query.build_query_as().fetch_all(pool).await
        })
    }

    /// Coupons of an event.
    pub async fn count_coupons(&self, event: &str) -> Result<i64, sqlx::Error> {
        on_pool!(self, pool => {
            let mut query = QueryBuilder::new("SELECT COUNT(*) FROM coupons WHERE event = ");
            query.push_bind(event);
            query.build_query_scalar().fetch_one(pool).await
        })
    }

    /// Up to `limit` coupons of an event with a slot above `after`, by slot, with the time
    /// each was issued: one page of an export.
    pub async fn coupon_page(&self, event: &str, after: i64, limit: i64) -> Result<Vec<ExportedCoupon>, sqlx::Error> {
        let select = format!("SELECT {}, slot, issued_at FROM coupons WHERE event = ", self.text("user_id"));
        let rows: Vec<(String, i64, chrono::DateTime<chrono::Utc>)> = on_pool!(self, pool => {
            let mut query = QueryBuilder::new(&select);
            query.push_bind(event).push(" AND slot > ").push_bind(after).push(" ORDER BY slot LIMIT ").push_bind(limit);
            query.build_query_as().fetch_all(pool).await?
        });
        rows.into_iter()
            .map(|(user_id, slot, issued_at)| {
                let issued_at =
                    Timestamp::from_microsecond(issued_at.timestamp_micros()).map_err(|error| sqlx::Error::Decode(error.into()))?;
                Ok(ExportedCoupon { user_id, slot, issued_at })
            })
            .collect()
    }

    /// `(user_id, slot)` of every coupon of an event, by slot.
    pub async fn coupons(&self, event: &str) -> Result<Vec<(String, i64)>, sqlx::Error> {
        let select = format!("SELECT {}, slot FROM coupons WHERE event = ", self.text("user_id"));
        on_pool!(self, pool => {
            let mut query = QueryBuilder::new(&select);
            query.push_bind(event).push(" ORDER BY slot");
            query.build_query_as().fetch_all(pool).await
        })
    }

    /// Failed records of a topic, by position.
    pub async fn failed_events(&self, topic: &str) -> Result<Vec<FailedRow>, sqlx::Error> {
        let select =
            format!("SELECT {}, kafka_partition, kafka_offset, payload, reason FROM failed_events WHERE topic = ", self.text("topic"));
        on_pool!(self, pool => {
            let mut query = QueryBuilder::new(&select);
            query.push_bind(topic).push(" ORDER BY kafka_partition, kafka_offset");
            let rows: Vec<(String, i32, i64, Vec<u8>, String)> = query.build_query_as().fetch_all(pool).await?;
            Ok(rows.into_iter().map(|(topic, partition, offset, payload, reason)| FailedRow { topic, partition, offset, payload, reason }).collect())
        })
    }
}

/// A coupon as `event export` writes it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportedCoupon {
    pub user_id: String,
    pub slot: i64,
    pub issued_at: Timestamp,
}

/// Where a record came from on the topic.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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

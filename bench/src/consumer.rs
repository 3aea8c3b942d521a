//! The consumer's writes into PostgreSQL: its path (binary COPY into a staging table, then one
//! INSERT … SELECT … ON CONFLICT, a transaction per batch) against multi-row INSERTs in the
//! same transactions, and against one INSERT per record.

use std::time::Instant;

use coupon_service::sql::{CouponRow, Position, Store};
use jiff::Timestamp;

use crate::results::Measure;
use crate::setup::{median, unique, Setup, Sizes};

pub async fn measure(setup: &Setup, sizes: &Sizes) -> anyhow::Result<Vec<Measure>> {
    let store = Store::connect(&setup.postgres_url).await?;
    store.migrate().await?;
    let Store::Postgres(pool) = &store else { anyhow::bail!("the consumer benchmark needs PostgreSQL") };
    let n = sizes.consumer_rows;
    let mut measures = Vec::new();
    // The consumer's default batch (BATCH_SIZE 500), and a larger one as a backlog allows.
    for batch in [500, 5000] {
        let (mut copy, mut values) = (Vec::new(), Vec::new());
        for _ in 0..sizes.rounds {
            copy.push(rows_per_second(&store, n, batch, Path::Consumer).await?);
            values.push(rows_per_second(&store, n, batch, Path::MultiRowInsert(pool)).await?);
        }
        let (copy, values) = (median(&copy), median(&values));
        let target = if batch == 500 { ">= 3" } else { "report" };
        let what = format!("consumer writes to PostgreSQL, binary COPY, batches of {batch} (rows/s, median of {})", sizes.rounds);
        measures.push(
            Measure::figure(&format!("consumer_copy_vs_multirow_insert_batch_{batch}"), what, copy, "rows/s", 0, target)
                .against(values, "multi-row INSERT … ON CONFLICT, same batches"),
        );
    }
    let single = rows_per_second(&store, n.min(5000), 1, Path::SingleInsert(pool)).await?;
    let consumer = measures[0].value;
    measures.push(
        Measure::figure(
            "consumer_copy_vs_single_insert",
            "consumer writes to PostgreSQL, batches of 500 (rows/s)",
            consumer,
            "rows/s",
            0,
            ">= 20",
        )
        .against(single, "one INSERT per record"),
    );
    Ok(measures)
}

/// How rows are written.
enum Path<'a> {
    /// The consumer's own (`Store::write_batch`: one transaction per batch).
    Consumer,
    /// One transaction per batch of multi-row `INSERT … VALUES … ON CONFLICT DO NOTHING` of
    /// up to 1,000 rows: the consumer's path before binary COPY.
    MultiRowInsert(&'a sqlx::PgPool),
    /// One INSERT per record, autocommitted.
    SingleInsert(&'a sqlx::PgPool),
}

/// Rows per second writing `n` fresh coupons of a new event in batches of `batch` by `path`.
async fn rows_per_second(store: &Store, n: usize, batch: usize, path: Path<'_>) -> anyhow::Result<f64> {
    let event = format!("bench/{}", unique("rows"));
    store.ensure_slots(&event, n as i64).await?;
    let records = rows(&event, n);
    let started = Instant::now();
    for chunk in records.chunks(batch) {
        match &path {
            Path::Consumer => {
                store.write_batch(chunk, &[]).await?;
            }
            Path::MultiRowInsert(pool) => {
                let mut tx = pool.begin().await?;
                for part in chunk.chunks(1000) {
                    let mut query = sqlx::QueryBuilder::new("INSERT INTO coupons (event, user_id, slot, issued_at) ");
                    query.push_values(part, |mut row, (coupon, _)| {
                        row.push_bind(&coupon.event)
                            .push_bind(&coupon.user_id)
                            .push_bind(coupon.slot)
                            .push_bind(coupon_service::sql::sql_timestamp(coupon.issued_at));
                    });
                    query.push(" ON CONFLICT DO NOTHING");
                    query.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
            Path::SingleInsert(pool) => {
                for (row, _) in chunk {
                    sqlx::query("INSERT INTO coupons (event, user_id, slot, issued_at) VALUES ($1, $2, $3, $4)")
                        .bind(&row.event)
                        .bind(&row.user_id)
                        .bind(row.slot)
                        .bind(coupon_service::sql::sql_timestamp(row.issued_at))
                        .execute(*pool)
                        .await?;
                }
            }
        }
    }
    let elapsed = started.elapsed();
    anyhow::ensure!(store.count_coupons(&event).await? == n as i64, "{n} rows not all written");
    Ok(n as f64 / elapsed.as_secs_f64())
}

fn rows(event: &str, n: usize) -> Vec<(CouponRow, Position)> {
    (1..=n as i64)
        .map(|slot| {
            (
                CouponRow { event: event.to_owned(), user_id: format!("u{slot}"), slot, issued_at: Timestamp::now(), mac: None },
                Position { topic: "bench".into(), partition: 0, offset: slot },
            )
        })
        .collect()
}

//! The consumer's writes into PostgreSQL (UNNEST of arrays, a transaction per batch), binary
//! COPY into a staging table (`pg_copy`) and multi-row INSERTs, in the same transactions; one
//! INSERT per record; and PostgreSQL inserting the same rows by itself, the schema's limit.

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
    let mut consumer_500 = 0.0;
    // The consumer's default batch (BATCH_SIZE 500), and a larger one as a backlog allows.
    for batch in [500, 5000] {
        // Each path once per round, in a rotating order; the medians are compared.
        let mut figures: [Vec<f64>; 3] = Default::default();
        for round in 0..sizes.rounds {
            for k in 0..3 {
                let side = (round + k) % 3;
                let path = match side {
                    0 => Path::Consumer,
                    1 => Path::Copy(pool),
                    _ => Path::MultiRowInsert(pool),
                };
                figures[side].push(rows_per_second(&store, n, batch, path).await?);
            }
        }
        let [consumer, copy, values] = figures.map(|f| median(&f));
        let rounds = sizes.rounds;
        let target = if batch == 500 { ">= 3" } else { "report" };
        let what = format!("binary COPY into staging, then INSERT … SELECT, batches of {batch} (rows/s, median of {rounds})");
        measures.push(
            Measure::figure(&format!("consumer_copy_vs_multirow_insert_batch_{batch}"), what, copy, "rows/s", 0, target)
                .against(values, "multi-row INSERT … ON CONFLICT, same batches"),
        );
        let what = format!("the consumer's writes (UNNEST of arrays), batches of {batch} (rows/s, median of {rounds})");
        measures.push(
            Measure::figure(&format!("consumer_vs_multirow_insert_batch_{batch}"), what, consumer, "rows/s", 0, "report")
                .against(values, "multi-row INSERT … ON CONFLICT, same batches"),
        );
        let what = format!("binary COPY against the consumer's own writes, batches of {batch} (rows/s, median of {rounds})");
        measures.push(
            Measure::figure(&format!("consumer_copy_vs_consumer_batch_{batch}"), what, copy, "rows/s", 0, "report")
                .against(consumer, "the consumer's writes (UNNEST), same batches"),
        );
        if batch == 500 {
            consumer_500 = consumer;
        }
    }
    let ceiling = server_side_rows_per_second(&store, pool, n).await?;
    measures.push(
        Measure::figure(
            "consumer_vs_server_side_insert",
            "the consumer's writes, batches of 500 (rows/s)",
            consumer_500,
            "rows/s",
            0,
            "report",
        )
        .against(ceiling, "INSERT … SELECT generate_series inside PostgreSQL: the schema's own limit, no client"),
    );
    let single = rows_per_second(&store, n.min(5000), 1, Path::SingleInsert(pool)).await?;
    measures.push(
        Measure::figure("consumer_vs_single_insert", "the consumer's writes, batches of 500 (rows/s)", consumer_500, "rows/s", 0, ">= 20")
            .against(single, "one INSERT per record"),
    );
    Ok(measures)
}

/// How rows are written.
enum Path<'a> {
    /// The consumer's own (`Store::write_batch`: one transaction per batch).
    Consumer,
    /// Binary COPY into a staging table, then one INSERT … SELECT, a transaction per batch.
    Copy(&'a sqlx::PgPool),
    /// One transaction per batch of multi-row `INSERT … VALUES … ON CONFLICT DO NOTHING` of
    /// up to 1,000 rows: the consumer's path on MySQL/MariaDB and SQLite, and the baseline
    /// the performance issue names.
    MultiRowInsert(&'a sqlx::PgPool),
    /// One INSERT per record, autocommitted.
    SingleInsert(&'a sqlx::PgPool),
}

/// Rows per second PostgreSQL itself inserts `n` coupons of a new event from
/// `generate_series`, with every constraint the consumer's rows meet: the schema's limit.
async fn server_side_rows_per_second(store: &Store, pool: &sqlx::PgPool, n: usize) -> anyhow::Result<f64> {
    let event = format!("bench/{}", unique("server-side"));
    store.ensure_slots(&event, n as i64).await?;
    let started = Instant::now();
    let inserted = sqlx::query(
        "INSERT INTO coupons (event, user_id, slot, issued_at) \
         SELECT $1, 'u' || g, g, now() FROM generate_series(1, $2::int8) AS g ON CONFLICT DO NOTHING",
    )
    .bind(&event)
    .bind(n as i64)
    .execute(pool)
    .await?
    .rows_affected();
    let elapsed = started.elapsed();
    anyhow::ensure!(inserted == n as u64, "the server-side insert wrote {inserted} of {n} rows");
    Ok(n as f64 / elapsed.as_secs_f64())
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
            Path::Copy(pool) => {
                let mut tx = pool.begin().await?;
                crate::pg_copy::insert_coupons(&mut tx, chunk).await?;
                tx.commit().await?;
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
                CouponRow {
                    event: event.to_owned(),
                    user_id: format!("u{slot}"),
                    slot,
                    ordinal: 1,
                    issued_at: Timestamp::now(),
                    mac: None,
                },
                Position { topic: "bench".into(), partition: 0, offset: slot },
            )
        })
        .collect()
}

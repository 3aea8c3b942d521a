//! The consumer's writes into PostgreSQL: batched transactions (the consumer's path) against
//! one INSERT per record.

use std::time::Instant;

use coupon_service::sql::{CouponRow, Position, Store};
use jiff::Timestamp;

use crate::results::Measure;
use crate::setup::{unique, Setup, Sizes};

pub async fn measure(setup: &Setup, sizes: &Sizes) -> anyhow::Result<Vec<Measure>> {
    let (batched, single) = consumer_writes(setup, sizes.consumer_rows).await?;
    Ok(vec![Measure::figure("consumer_batched_vs_single_insert", "consumer writes to PostgreSQL (rows/s)", batched, "rows/s", 0, ">= 20")
        .against(single, "one INSERT per record")])
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

/// Rows per second: batched transactions of 500 (the consumer) vs one INSERT per record.
async fn consumer_writes(setup: &Setup, n: usize) -> anyhow::Result<(f64, f64)> {
    let store = Store::connect(&setup.postgres_url).await?;
    store.migrate().await?;
    let batched_event = format!("bench/{}", unique("batched"));
    store.ensure_slots(&batched_event, n as i64).await?;
    let records = rows(&batched_event, n);
    let started = Instant::now();
    for chunk in records.chunks(500) {
        store.write_batch(chunk, &[]).await?;
    }
    let batched = n as f64 / started.elapsed().as_secs_f64();

    let single_event = format!("bench/{}", unique("single"));
    store.ensure_slots(&single_event, n as i64).await?;
    let Store::Postgres(pool) = &store else { anyhow::bail!("the consumer benchmark needs PostgreSQL") };
    let started = Instant::now();
    for (row, _) in rows(&single_event, n) {
        sqlx::query("INSERT INTO coupons (event, user_id, slot, issued_at) VALUES ($1, $2, $3, $4)")
            .bind(&row.event)
            .bind(&row.user_id)
            .bind(row.slot)
            .bind(coupon_service::sql::sql_timestamp(row.issued_at))
            .execute(pool)
            .await?;
    }
    let single = n as f64 / started.elapsed().as_secs_f64();
    Ok((batched, single))
}

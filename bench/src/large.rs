//! An event of 1,000,000: its restore from SQL (time, calls, the longest Redis command) and
//! the first record the consumer writes, against writing every slot row at once.

use std::time::{Duration, Instant};

use coupon_core::event::{EventConfig, EventId};
use coupon_core::provision;
use coupon_core::redis::{keyspace, RedisHandle};
use coupon_service::sql::{Position, Store};
use jiff::Timestamp;

use crate::results::Measure;
use crate::setup::{event, unique, Setup, Sizes};

pub async fn measure(setup: &Setup, sizes: &Sizes) -> anyhow::Result<Vec<Measure>> {
    let n = sizes.large_event;
    let large = large_event(setup, n).await?;
    // The slow log keeps commands of 0.5 ms and more: with none there, the figure is only
    // known to be under that (no value, no ratio).
    let longest_ms = large.longest_command_micros.map_or(f64::NAN, |us| us as f64 / 1000.0);
    let longest_what = if large.longest_command_micros.is_some() { "" } else { " (none in the slow log: under 0.5)" };
    let client_side_ms = large.longest_call.as_secs_f64() * 1000.0;
    let longest = Measure::figure(
        "large_restore_longest_command_ms",
        format!("restore: longest single Redis command, server side (ms){longest_what}"),
        longest_ms,
        "ms",
        1,
        "a few ms",
    );
    let longest = if longest_ms.is_nan() {
        longest.beside(format!("{client_side_ms:.1} client side, with the round trip"))
    } else {
        longest.against(client_side_ms, "client side, with the round trip")
    };
    Ok(vec![
        Measure::figure(
            "large_restore_s",
            format!("restore of an event with {n} rows from SQL (s)"),
            large.restore.as_secs_f64(),
            "s",
            1,
            "bounded memory",
        )
        .beside(format!("{n} users, {n} free slots, {} Redis calls", large.calls)),
        longest,
        Measure::figure(
            "large_first_record_vs_all_slots",
            format!("first record of a {n}-coupon event (ms)"),
            large.first_record.as_secs_f64() * 1000.0,
            "ms",
            0,
            "<< 1",
        )
        .against(large.all_slots_at_once.as_secs_f64() * 1000.0, "all slot rows at once"),
    ])
}

/// A restore of an event of `n` rows from PostgreSQL, and the first record of an event of
/// `n` coupons: `(restore time, Redis calls, longest call, first record time, all slot rows
/// at once time)`.
struct LargeEvent {
    restore: Duration,
    calls: u64,
    longest_call: Duration,
    /// Server side, from the slow log; `None`: none took 0.5 ms.
    longest_command_micros: Option<u64>,
    first_record: Duration,
    all_slots_at_once: Duration,
}

async fn large_event(setup: &Setup, n: i64) -> anyhow::Result<LargeEvent> {
    use coupon_service::consumer::batch::RawRecord;
    use coupon_service::consumer::recovery::restore_event;
    use coupon_service::consumer::BatchWriter;

    let store = Store::connect(&setup.postgres_url).await?;
    store.migrate().await?;
    let Store::Postgres(pool) = &store else { anyhow::bail!("the large-event benchmark needs PostgreSQL") };
    // An event whose Redis state is lost, with `n` rows in SQL (every other slot, so the
    // free list is as long as the users).
    let name = unique("large");
    let id = EventId::new("bench", &name)?;
    let key = id.to_string();
    let limit = 2 * n;
    store.ensure_slots(&key, limit).await?;
    sqlx::query(
        "INSERT INTO coupons (event, user_id, slot, issued_at) SELECT $1, 'user-' || g, 2 * g, now() FROM generate_series(1, $2) AS g",
    )
    .bind(&key)
    .bind(n)
    .execute(pool)
    .await?;
    let mut conn = RedisHandle::connect_with_deadline(&setup.redis_url, Duration::from_secs(10)).await?;
    let config = EventConfig::open_now(limit, &format!("bench.{name}"), Duration::from_secs(3600));
    provision::provision_redis(&mut conn, &id, &config, true).await?;
    let saved = coupon_core::redis::diagnostics::start_slowlog(&mut conn).await?;
    let started = Instant::now();
    let report = restore_event(&store, &mut conn, &id, i64::MAX).await?.ok_or_else(|| anyhow::anyhow!("restore did not run"))?;
    let restore = started.elapsed();
    let longest_command_micros = coupon_core::redis::diagnostics::slowest_since(&mut conn, saved).await?;
    let counters = keyspace::counters(&mut conn, &id).await?.ok_or_else(|| anyhow::anyhow!("no counters"))?;
    anyhow::ensure!(counters.issued == n && counters.persisted == n && !counters.recovering, "restored {counters:?}");
    keyspace::delete_event(&mut conn, &id).await?;

    // The first record of a fresh event of `n` coupons, through the consumer's writer.
    let (fresh, _) = event(setup, n).await?;
    let redis = RedisHandle::connect_in_background(&setup.redis_url)?;
    redis.wait().await;
    let mut writer = BatchWriter::new(store.clone(), redis, coupon_service::metrics::Metrics::shared(), Duration::from_secs(60), None);
    // Issued by the gate first, as every record is (the writer refuses a slot nobody holds).
    let mut issuer = RedisHandle::connect_with_deadline(&setup.redis_url, Duration::from_secs(10)).await?;
    keyspace::apply(&mut issuer, &keyspace::EventLayout::single(&fresh), "first", Duration::from_secs(600), None).await?;
    let record = coupon_core::event::CouponRecord {
        event: fresh.to_string(),
        user_id: "first".into(),
        slot: 1,
        ordinal: 1,
        issued_at: Timestamp::now(),
        mac: None,
    };
    let raw = RawRecord { position: Position { topic: "bench".into(), partition: 0, offset: 0 }, payload: serde_json::to_vec(&record)? };
    let started = Instant::now();
    writer.write(&[raw]).await?;
    let first_record = started.elapsed();
    // Baseline: every slot row at once, as the first record used to cost.
    let started = Instant::now();
    store.ensure_slots(&format!("bench/{}", unique("all-slots")), n).await?;
    let all_slots_at_once = started.elapsed();
    Ok(LargeEvent {
        restore,
        calls: report.calls,
        longest_call: report.longest_call,
        longest_command_micros,
        first_record,
        all_slots_at_once,
    })
}

//! A burst of 10,000 users at once against a limit of 100, with the consumer on PostgreSQL:
//! exactly 100 issued and written, no 5xx, the latency of every answer, and how long until
//! every row is written.

use std::time::{Duration, Instant};

use coupon_service::app::{Consumer, ConsumerSettings};
use coupon_service::sql::Store;

use crate::results::Measure;
use crate::setup::{burst, event, unique, Setup};

pub async fn measure(setup: &Setup, url: &str) -> anyhow::Result<Vec<Measure>> {
    let (flash, topic) = event(setup, 100).await?;
    let store = Store::connect(&setup.postgres_url).await?;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let consumer = Consumer::start(
        ConsumerSettings {
            database_url: setup.postgres_url.clone(),
            redis_url: setup.redis_url.clone(),
            kafka: setup.kafka.clone(),
            topics: vec![topic],
            group_id: unique("bench"),
            batch_linger: Duration::from_millis(5),
            ..ConsumerSettings::default()
        },
        None,
        stop_rx,
    )?;
    let assigned = consumer.assigned.clone();
    // The consumer joins its group before the burst, as a deployed consumer would have.
    let joined_by = Instant::now() + Duration::from_secs(30);
    while assigned.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        anyhow::ensure!(Instant::now() < joined_by, "the consumer got no partition within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = burst(url, flash.name(), 10_000, 256, "crowd-").await?;
    let burst_done = Instant::now();
    let mut persisted = store.count_coupons(&flash.to_string()).await?;
    while persisted < 100 && burst_done.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(5)).await;
        persisted = store.count_coupons(&flash.to_string()).await?;
    }
    let persist_time = burst_done.elapsed();
    let _ = stop.send(true);
    consumer.stopped().await?;
    Ok(vec![
        Measure::figure(
            "burst_10000_limit_100_issued",
            "burst of 10,000: coupons issued",
            report.count(201) as f64,
            "coupons",
            0,
            "exactly 100",
        )
        .beside("limit 100"),
        Measure::figure("burst_10000_limit_100_rows", "burst of 10,000: rows written", persisted as f64, "rows", 0, "exactly 100")
            .beside("limit 100"),
        Measure::figure("burst_10000_limit_100_5xx", "burst of 10,000: 5xx answers", report.server_errors() as f64, "answers", 0, "0"),
        Measure::figure(
            "burst_10000_limit_100_p99_ms",
            "burst of 10,000: latency p99 of all answers (ms)",
            report.p99_ms(),
            "ms",
            1,
            "<= 50",
        ),
        Measure::figure(
            "burst_10000_limit_100_issued_p50_ms",
            "burst of 10,000: latency p50 of the 201s (ms)",
            report.percentile_ms_of(201, 0.5),
            "ms",
            1,
            "report",
        ),
        Measure::figure(
            "burst_10000_limit_100_issued_p99_ms",
            "burst of 10,000: latency p99 of the 201s (ms)",
            report.percentile_ms_of(201, 0.99),
            "ms",
            1,
            "report",
        ),
        Measure::figure(
            "burst_10000_limit_100_soldout_p50_ms",
            "burst of 10,000: latency p50 of the 410s (ms)",
            report.percentile_ms_of(410, 0.5),
            "ms",
            1,
            "report",
        ),
        Measure::figure(
            "burst_10000_limit_100_soldout_p99_ms",
            "burst of 10,000: latency p99 of the 410s (ms)",
            report.percentile_ms_of(410, 0.99),
            "ms",
            1,
            "report",
        ),
        Measure::figure(
            "burst_10000_limit_100_persisted_after_s",
            "burst of 10,000: all rows persisted after (s)",
            persist_time.as_secs_f64(),
            "s",
            3,
            "< 2",
        ),
    ])
}

//! `coupon-bench`: measures the apply path and the consumer against baselines run in the
//! same process on the same machine; prints one markdown table of ratios and writes the same
//! figures to `bench/results.json` (`results`).
//!
//! Needs Redis, PostgreSQL, a Kafka broker and the bench cluster on loopback (`dev/stack up`)
//! and `redis-benchmark` (Debian's redis-tools). Run it with `bench/run` (`--quick`: every
//! measure at smaller sizes). `BENCH_ONLY=soldout` (say) runs one part, e.g. under a profiler.

mod burst;
mod churn;
mod consumer;
mod issuing;
mod jwt;
mod large;
mod overload;
mod pg_copy;
mod reads;
mod results;
mod setup;
mod shards;
mod soldout;

use coupon_core::kafka::KafkaSettings;

use results::{Machine, Measure};
use setup::{env, Setup, Sizes};

/// The parts, in the order they run and print.
const PARTS: [&str; 10] = ["issuing", "soldout", "churn", "reads", "overload", "jwt", "shards", "consumer", "burst", "large"];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let quick = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--quick") => true,
        Some(other) => anyhow::bail!("unknown argument {other:?}: coupon-bench [--quick]"),
    };
    let sizes = Sizes::new(quick)?;
    let setup = Setup {
        redis_url: env("REDIS_URL", "redis://127.0.0.1:6379"),
        kafka: KafkaSettings::new(env("KAFKA_BROKERS", "127.0.0.1:9092")),
        postgres_url: env("POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test"),
    };
    let only = std::env::var("BENCH_ONLY").ok();
    if let Some(part) = only.as_deref().filter(|part| !PARTS.contains(part)) {
        anyhow::bail!("BENCH_ONLY={part}: not one of {PARTS:?}");
    }
    let run = |part: &str| only.as_deref().is_none_or(|o| o == part);
    let mut measures: Vec<Measure> = Vec::new();

    let (url, _state) = setup::api(&setup).await?;
    if run("issuing") {
        measures.extend(issuing::measure(&setup, &url, &sizes).await?);
    }
    if run("soldout") {
        measures.extend(soldout::measure(&setup, &url, &sizes).await?);
    }
    if run("churn") {
        measures.extend(churn::measure(&setup, &url, &sizes).await?);
    }
    if run("reads") {
        measures.extend(reads::measure(&setup, &url, sizes.requests).await?);
    }
    if run("overload") {
        measures.extend(overload::measure(&setup, sizes.requests / 4).await?);
    }
    if run("jwt") {
        measures.extend(jwt::measure(&setup, &url, &sizes).await?);
    }
    if run("shards") {
        measures.extend(shards::measure(&setup, &sizes).await?);
    }
    if run("consumer") {
        measures.extend(consumer::measure(&setup, &sizes).await?);
    }
    if run("burst") {
        measures.extend(burst::measure(&setup, &url).await?);
    }
    if run("large") {
        measures.extend(large::measure(&setup, &sizes).await?);
    }

    print!("{}", results::table(&measures));
    let path = env("BENCH_RESULTS", concat!(env!("CARGO_MANIFEST_DIR"), "/results.json"));
    std::fs::write(&path, results::json(&measures, &Machine::this(), &sizes)? + "\n")?;
    eprintln!("wrote {path}");
    Ok(())
}

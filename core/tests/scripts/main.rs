//! Every Lua script of the keyspace, run alone against a real Redis (`REDIS_URL`, the test
//! suite's), through the typed function that wraps it: one table of cases per script, one
//! case per answer the script can give. A script's answers are its contract with the Rust
//! code; a case that cannot be built says so instead of being left out.

mod config;
mod gate;
mod grants;
mod holders;
mod recovery;
mod registry;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use coupon_core::event::{EventConfig, EventId};
use coupon_core::redis::keyspace::{self, ConfigWrite, EventLayout};
use coupon_core::redis::{RedisConnection, RedisHandle};

pub const NAMESPACE: &str = "scripts";

pub async fn connect() -> RedisConnection {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    RedisHandle::connect_with_deadline(url, Duration::from_secs(10)).await.expect("Redis is up (dev/stack up)")
}

/// A name no other case or run uses.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}-{}-{nanos}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// An event open now for ten minutes with `limit` coupons.
pub fn open(limit: i64) -> EventConfig {
    EventConfig::open_now(limit, "scripts", Duration::from_secs(600))
}

/// A new event written with `config` (created, not recovering).
pub async fn event(conn: &mut RedisConnection, config: &EventConfig) -> (EventId, EventLayout) {
    let id = EventId::new(NAMESPACE, &unique("ev")).unwrap();
    assert_eq!(keyspace::write_config(conn, &id, config, false).await.unwrap(), ConfigWrite::Created);
    let layout = EventLayout::new(&id, config.shards);
    (id, layout)
}

/// `count` users homed on `shard` of `layout`.
pub fn homed_on(layout: &EventLayout, shard: u16, count: usize) -> Vec<String> {
    (0..).map(|n| format!("user-{n}")).filter(|user| layout.home_shard(user) == shard).take(count).collect()
}

pub const LONG: Duration = Duration::from_secs(600);

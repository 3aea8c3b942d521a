//! The apply gate: one atomic script decides whether a user gets a slot, and the release of
//! a slot whose record was certainly not written.
//!
//! Unlike the seed's `INCR`-then-compare, the counter never passes the limit: the script
//! checks `count < limit` before it increments, so `count <= limit` holds in Redis itself.

use std::sync::LazyLock;

use redis::aio::ConnectionManager;
use redis::{RedisResult, Script};

use super::EventKeys;
use crate::event::EventId;

const APPLY_LUA: &str = include_str!("lua/apply.lua");

/// `Script::invoke_async` sends EVALSHA and loads the script again when Redis answers
/// NOSCRIPT (after a restart or `SCRIPT FLUSH`).
static APPLY: LazyLock<Script> = LazyLock::new(|| Script::new(APPLY_LUA));
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/release.lua")));

/// The gate's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GateDecision {
    /// The user holds `slot`; its record goes to `topic`.
    Issued {
        slot: i64,
        topic: String,
    },
    Duplicate,
    SoldOut,
    NotOpen,
    Closed,
    UnknownEvent,
    /// Redis lost the event's state and the consumer is restoring it from SQL.
    Recovering,
}

impl GateDecision {
    fn from_answer((code, topic): (i64, String)) -> RedisResult<Self> {
        Ok(match code {
            slot if slot > 0 => Self::Issued { slot, topic },
            -1 => Self::UnknownEvent,
            -2 => Self::NotOpen,
            -3 => Self::Closed,
            -4 => Self::Duplicate,
            -5 => Self::SoldOut,
            -6 => Self::Recovering,
            other => {
                return Err(redis::RedisError::from((redis::ErrorKind::TypeError, "unexpected gate script answer", other.to_string())))
            }
        })
    }
}

/// Decides one apply: one Redis round trip.
pub async fn apply(conn: &mut ConnectionManager, event: &EventId, user_id: &str) -> RedisResult<GateDecision> {
    let keys = EventKeys::of(event);
    let answer: (i64, String) =
        APPLY.key(&keys.config).key(&keys.count).key(&keys.users).key(&keys.free).arg(user_id).invoke_async(conn).await?;
    GateDecision::from_answer(answer)
}

/// Undoes an issued slot whose record never reached the broker. Returns whether a mark was
/// removed.
pub async fn release(conn: &mut ConnectionManager, event: &EventId, user_id: &str, slot: i64) -> RedisResult<bool> {
    let keys = EventKeys::of(event);
    let removed: i64 = RELEASE.key(&keys.config).key(&keys.users).key(&keys.free).arg(user_id).arg(slot).invoke_async(conn).await?;
    Ok(removed == 1)
}

/// Loads the gate script into `conn`'s server and returns the arguments of
/// `redis-benchmark ... EVALSHA <args>` that run it against `event` with a random user
/// (`__rand_int__`): the benchmark's baseline, the script alone.
pub async fn prepare_gate_benchmark(conn: &mut ConnectionManager, event: &EventId) -> RedisResult<Vec<String>> {
    let sha: String = redis::cmd("SCRIPT").arg("LOAD").arg(APPLY_LUA).query_async(conn).await?;
    let keys = EventKeys::of(event);
    Ok(vec![sha, "4".into(), keys.config, keys.count, keys.users, keys.free, "user:__rand_int__".into()])
}

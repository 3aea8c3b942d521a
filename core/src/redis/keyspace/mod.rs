//! The Redis keyspace: the one place that names keys and hash fields, holds the Lua scripts
//! (`lua/*.lua`) and sends commands. Every read and write of the system goes through a
//! typed function here.
//!
//! # Layout (the reference)
//!
//! One event is one Redis hash tag, `{<namespace>/<name>}`, so all of its keys live in the
//! same Redis Cluster slot and one script can touch them atomically. An event of K shards
//! (`EventLayout`, `layout.rs`) has K such tags, each with every key below; shard 0 is the
//! event's own tag. Each shard decides its users (by `home_shard`) and hands out the slots of
//! its stride (`shard + 1 + k·K`); stock moves between shards by grants
//! (`docs/architecture.md`, "Redis Cluster and sharded events").
//!
//! | key | type | holds |
//! |---|---|---|
//! | `coupon:{ns/name}:config` | hash | `limit`, `per_user`, `start_ms`, `end_ms` (window, server time in ms), `topic`, `paused`, `shards` and `shard` (absent: 1 and 0), `incarnation` (the UID of the `CouponEvent` the event belongs to, written at creation and never changed: records and rows carry it in their event key), `server` (replication id of the Redis the state was last verified on), `holders_version` (grows with every change of who may hold a slot: a release, a heal, a slot handed out again, a new limit, a restore), `holders_base` and `holders_logged` (the change log holds every change past the first, up to the second; `lua/common.lua`, `holders_changed`); while the state is being verified against SQL also `recovering` = `1`, `recovering_since_ms` and, during the write-back, `restoring` and `restore_server`. A deleted event leaves only `deleted` = `1` here for a day (a tombstone) |
//! | `coupon:{ns/name}:count` | integer | slots of the shard's stride handed out (with one shard: the highest slot ever handed out; never beyond `limit`) |
//! | `coupon:{ns/name}:users` | hash | user → their entries, `slot:state` separated by spaces; state `p` pending (issued, record not yet acknowledged), `a` acknowledged by the broker (the user was answered 201), `w` written to SQL after that, `x` written to SQL but never confirmed to the user (their next apply answers 201 without producing). One entry per user today; `per_user` > 1 adds entries to the same value |
//! | `coupon:{ns/name}:unwritten` | sorted set | `slot:user` of every entry not yet written, scored by its delivery deadline (server ms): what healing looks at |
//! | `coupon:{ns/name}:free` | list | slots given back (a produce that certainly failed, or healed); handed out first |
//! | `coupon:{ns/name}:persisted` | integer | entries written to SQL |
//! | `coupon:{ns/name}:healed` | integer | entries given back by healing |
//! | `coupon:{ns/name}:held` | integer | slots the shard's users hold (a sharded event's `issued` is the sum) |
//! | `coupon:{ns/name}:grants` | hash | grant id → `target slot slot ...`: stock this shard gave and that is not settled yet |
//! | `coupon:{ns/name}:grant_deadlines` | sorted set | grant ids by deadline (server ms): when healing may close them |
//! | `coupon:{ns/name}:accepted` / `:refused` | sets | grant ids this shard took / refused for good |
//! | `coupon:{ns/name}:holder_changes` | sorted set | users whose entries a release, a heal or a slot handed out again changed, scored by the `holders_version` of their last change (at most 10,000: the oldest go), so an api keeping a sold-out event's holders reads only what changed (`holders.rs`) |
//! | `coupon:{ns/name}:call:<id>` | string | one gate call's answers (JSON), kept for the lease when the call issued, redelivered or confirmed a slot, so that a resent call answers the same; expires by itself |
//! | `coupon:{ns/name}:idempotency:<user>` | hash | the user's `Idempotency-Key`s of the event (on their home shard): key → JSON `{g, f, t, s, b}` (generation: incarnation and epoch; fingerprint of the request body; claimed at, server ms; status, 0 while the first request is under way; body). At most 16, the oldest claimed going first; expires 24 h after the window (`idempotency.rs`) |
//! | `coupon:events` | set | every provisioned event (`ns/name`), for the consumer's verification and healing passes; outside any event's hash tag |
//!
//! Issued coupons are `count - len(free)` with one shard, the sum of `held` with several.
//!
//! Every script is `lua/common.lua` followed by its own file (`script!`). The common part holds
//! what every script shares: the answer codes (`ANSWER`, mirrored by `codes::Answer`), reading
//! KEYS and ARGV by name (`named`; each script's names and their order are `contract.rs`'s, which
//! its callers build the KEYS from) and configuration fields by name (`read_config`), and
//! fencing (`fenced`, `mark_recovering`), written once. Prepended rather than loaded as Redis Functions: `EVALSHA` with the source
//! sent again on `NOSCRIPT` needs nothing loaded on a master beforehand, which a restarted,
//! promoted or new master of a cluster would otherwise lack until someone loaded it there.
//! Each script runs alone against a real Redis in `core/tests/scripts`, one case per answer.

mod codes;
mod config;
mod contract;
mod counters;
mod eviction;
mod gate;
mod grants;
mod heal;
mod holders;
mod holdings;
pub mod idempotency;
pub mod inspect;
mod issued;
mod layout;
mod recovery;
mod registry;
mod snapshot;

use crate::redis::RedisConnection;
use redis::RedisResult;

use codes::Answer;
pub use config::{write_config, ConfigWrite};
pub use counters::{counters, counters_in, layout, presence, topic, EventCounters, EventPresence};
pub use eviction::{eviction, set_eviction_for_tests, Eviction, EvictionRisk};
pub use gate::{ack, apply, apply_many, prepare_gate_benchmark, release, unique_id, GateDecision, Grant};
pub use grants::{close_grant, expired_grants, grant, settle_grant, stock, stride_left, GrantVerdict, ShardStock};
pub use heal::{heal, mark_written, overdue_entries, HealVerdict, Healed, OverdueEntry};
pub use holders::{holders, refresh_holders, Holders, HoldersRead};
pub use holdings::{holdings, representative, user_view, wait_for_replicas, Holding, HoldingState, UserView};
pub use issued::{issued_to, Issued};
use layout::EventKeys;
pub use layout::{home_shard, EventLayout};
pub use recovery::{fence, restore_begin, restore_chunk, restore_finish, RestoreStep};
pub(crate) use registry::register;
pub use registry::{
    delete_event, delete_event_shard_for_tests, existing_keys, registered_events, retire_event, tombstone_ttl, unregister, Retirement,
};
pub use snapshot::{snapshot, snapshot_shard, EventSnapshot};

/// A script of this keyspace: `lua/common.lua` (shared helpers) followed by `lua/<name>.lua`.
/// `Script::invoke_async` sends EVALSHA and loads the script again when Redis answers
/// NOSCRIPT (after a restart or `SCRIPT FLUSH`).
macro_rules! script {
    ($name:literal) => {{
        static SCRIPT: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new($crate::redis::keyspace::script_source!($name)));
        &*SCRIPT
    }};
}

/// The source text of a keyspace script (`script!`).
macro_rules! script_source {
    ($name:literal) => {
        concat!(include_str!("lua/common.lua"), "\n", include_str!(concat!("lua/", $name, ".lua")))
    };
}
pub(crate) use {script, script_source};

/// Every provisioned event (members `<ns>/<name>`).
const EVENTS: &str = "coupon:events";

/// How long a deleted event's tombstone stays.
const TOMBSTONE_TTL_SECS: u64 = 24 * 3600;

/// Fields of the config hash.
mod field {
    pub const LIMIT: &str = "limit";
    pub const PER_USER: &str = "per_user";
    pub const START_MS: &str = "start_ms";
    pub const END_MS: &str = "end_ms";
    pub const TOPIC: &str = "topic";
    pub const RECOVERING: &str = "recovering";
    pub const INCARNATION: &str = "incarnation";
    pub const DELETED: &str = "deleted";
    pub const SHARDS: &str = "shards";
    pub const HOLDERS_VERSION: &str = "holders_version";
}

/// Up to `max` members of the sorted set `key` scored at or before `cutoff_ms`, lowest first
/// (the overdue entries of `unwritten`, the expired grants of `grant_deadlines`).
async fn due_members(conn: &mut RedisConnection, key: &str, cutoff_ms: i64, max: usize) -> RedisResult<Vec<String>> {
    redis::cmd("ZRANGE").arg(key).arg("-inf").arg(cutoff_ms).arg("BYSCORE").arg("LIMIT").arg(0).arg(max).query_async(conn).await
}

/// Server time in ms (for cut-offs compared with scores the scripts wrote), of the master of
/// the list of events (the masters of a cluster keep their clocks in step, as the cut-offs'
/// settle time assumes).
pub async fn server_time_ms(conn: &mut RedisConnection) -> RedisResult<i64> {
    let (secs, micros): (i64, i64) = conn.query_at(EVENTS, &redis::cmd("TIME")).await?;
    Ok(secs * 1000 + micros / 1000)
}

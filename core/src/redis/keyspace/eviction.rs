//! Whether Redis may evict the keys exactness rests on.
//!
//! A Redis shared with a cache often runs with a `maxmemory` and an eviction policy. Under an
//! `allkeys-*` policy any key can go when memory runs short: an event's `count`, its users or
//! its free list can vanish while its configuration stays, and the replication id does not
//! change (nothing was restarted or failed over), so the fencing does not see it. Users then
//! get second coupons. Under a `volatile-*` policy only keys with a TTL can go. The keys
//! exactness needs carry no TTL, except the answers the gate keeps for a resent batch,
//! which are needed too. So the only safe settings are `noeviction`, or no `maxmemory`
//! (nothing is ever evicted). Provisioning refuses the others and the api issues nothing
//! under them. The setting is read from `INFO memory`: managed services block `CONFIG`.

use super::RedisConnection;

/// The eviction setting of a Redis server, as `INFO memory` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eviction {
    /// `maxmemory-policy`.
    pub policy: String,
    /// `maxmemory` in bytes; 0: no limit, nothing is ever evicted.
    pub maxmemory: u64,
}

/// Redis may evict keys the event's exactness rests on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "Redis may evict keys the events depend on (maxmemory-policy {policy} with maxmemory {maxmemory} bytes): a user could get a second coupon. \
     Set maxmemory-policy to noeviction (a parameter group on managed services), or use a Redis that is not a cache"
)]
pub struct EvictionRisk {
    pub policy: String,
    pub maxmemory: u64,
}

impl Eviction {
    /// The setting in the text of `INFO memory`; `None` when it lacks the fields.
    pub fn from_info(info: &str) -> Option<Self> {
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.trim_end_matches('\r').strip_prefix(name).and_then(|rest| rest.strip_prefix(':')).map(str::to_owned))
        };
        Some(Self { policy: field("maxmemory_policy")?, maxmemory: field("maxmemory")?.parse().ok()? })
    }

    /// `Err` when keys the events depend on may be evicted.
    pub fn check(&self) -> Result<(), EvictionRisk> {
        if self.maxmemory == 0 || self.policy == "noeviction" {
            return Ok(());
        }
        Err(EvictionRisk { policy: self.policy.clone(), maxmemory: self.maxmemory })
    }
}

/// The eviction setting that matters for `conn`: of its server, or with a Redis Cluster the
/// first node whose setting is unsafe (redis-rs sends `INFO` to every master there and
/// answers node by node). `None` when no answer carries the fields (a server that does not
/// report them: nothing to judge by).
pub async fn eviction(conn: &mut RedisConnection) -> redis::RedisResult<Option<Eviction>> {
    let answer: redis::Value = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    let settings: Vec<Eviction> = texts(&answer).iter().filter_map(|text| Eviction::from_info(text)).collect();
    Ok(settings.iter().find(|e| e.check().is_err()).or(settings.first()).cloned())
}

/// The text answers in `INFO`'s reply: one, or one per node.
fn texts(value: &redis::Value) -> Vec<String> {
    match value {
        redis::Value::BulkString(bytes) => vec![String::from_utf8_lossy(bytes).into_owned()],
        redis::Value::SimpleString(text) => vec![text.clone()],
        redis::Value::VerbatimString { text, .. } => vec![text.clone()],
        redis::Value::Map(pairs) => pairs.iter().flat_map(|(_, node)| texts(node)).collect(),
        redis::Value::Array(items) => items.iter().flat_map(texts).collect(),
        _ => Vec::new(),
    }
}

/// Sets a server's memory limit and eviction policy, as an operator of a shared Redis would
/// (for tests: the api and provisioning must notice).
pub async fn set_eviction_for_tests(conn: &mut RedisConnection, maxmemory: u64, policy: &str) -> redis::RedisResult<()> {
    redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(maxmemory).arg("maxmemory-policy").arg(policy).query_async::<()>(conn).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_noeviction_or_no_limit_keeps_the_events_keys() {
        let info = "# Memory\r\nused_memory:1024\r\nmaxmemory:104857600\r\nmaxmemory_human:100.00M\r\nmaxmemory_policy:allkeys-lru\r\n";
        let eviction = Eviction::from_info(info).unwrap();
        assert_eq!(eviction, Eviction { policy: "allkeys-lru".into(), maxmemory: 104_857_600 });
        assert!(eviction.check().unwrap_err().to_string().contains("allkeys-lru"));
        assert!(Eviction { policy: "volatile-lru".into(), maxmemory: 1 }.check().is_err(), "the gate's batch answers carry a TTL");
        assert!(Eviction { policy: "noeviction".into(), maxmemory: 1 }.check().is_ok());
        assert!(Eviction { policy: "allkeys-lru".into(), maxmemory: 0 }.check().is_ok(), "no limit: nothing is evicted");
        assert_eq!(Eviction::from_info("# Memory\r\n"), None);
    }
}

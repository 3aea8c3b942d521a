//! Server-side figures for benchmarks and tests: the slowest command Redis ran in a stretch
//! of work, from its slow log (so the figure excludes the network and the client); the time
//! a server spent in scripts; where a cluster's slots are and how its nodes see it.

use crate::redis::RedisConnection;
use redis::RedisResult;

/// Commands slower than this are logged while a measurement runs.
const THRESHOLD_MICROS: u64 = 500;
const LOG_LENGTH: u64 = 100_000;

/// Starts a measurement: empties the slow log and logs every command slower than 0.5 ms.
/// Returns the settings to put back with `slowest_since`.
pub async fn start_slowlog(conn: &mut RedisConnection) -> RedisResult<(String, String)> {
    let threshold: (String, String) = redis::cmd("CONFIG").arg("GET").arg("slowlog-log-slower-than").query_async(conn).await?;
    let length: (String, String) = redis::cmd("CONFIG").arg("GET").arg("slowlog-max-len").query_async(conn).await?;
    let _: () = redis::cmd("CONFIG").arg("SET").arg("slowlog-log-slower-than").arg(THRESHOLD_MICROS).query_async(conn).await?;
    let _: () = redis::cmd("CONFIG").arg("SET").arg("slowlog-max-len").arg(LOG_LENGTH).query_async(conn).await?;
    let _: () = redis::cmd("SLOWLOG").arg("RESET").query_async(conn).await?;
    Ok((threshold.1, length.1))
}

/// The longest command (microseconds) since `start_slowlog`, or `None` if none took 0.5 ms;
/// puts the slow-log settings back.
pub async fn slowest_since(conn: &mut RedisConnection, saved: (String, String)) -> RedisResult<Option<u64>> {
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG").arg("GET").arg(LOG_LENGTH).query_async(conn).await?;
    let longest = entries
        .iter()
        .filter_map(|entry| match entry {
            redis::Value::Array(fields) => match fields.get(2) {
                Some(redis::Value::Int(micros)) => Some(*micros as u64),
                _ => None,
            },
            _ => None,
        })
        .max();
    let _: () = redis::cmd("CONFIG").arg("SET").arg("slowlog-log-slower-than").arg(saved.0).query_async(conn).await?;
    let _: () = redis::cmd("CONFIG").arg("SET").arg("slowlog-max-len").arg(saved.1).query_async(conn).await?;
    Ok(longest)
}

/// The slot ranges of a Redis Cluster and the master (`host`, `port`) serving each, from
/// `CLUSTER SLOTS` (tests and benchmarks: which master holds a shard).
pub async fn slot_masters(conn: &mut RedisConnection) -> RedisResult<Vec<(u16, u16, String, u16)>> {
    let ranges: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
    Ok(ranges
        .iter()
        .filter_map(|range| {
            let from: u16 = redis::from_redis_value(range.first()?).ok()?;
            let to: u16 = redis::from_redis_value(range.get(1)?).ok()?;
            let redis::Value::Array(master) = range.get(2)? else { return None };
            let host: String = redis::from_redis_value(master.first()?).ok()?;
            let port: u16 = redis::from_redis_value(master.get(1)?).ok()?;
            Some((from, to, host, port))
        })
        .collect())
}

/// The masters (`host`, `port`) of a Redis Cluster, each once, sorted.
pub async fn masters(conn: &mut RedisConnection) -> RedisResult<Vec<(String, u16)>> {
    let mut masters: Vec<(String, u16)> = slot_masters(conn).await?.into_iter().map(|(_, _, host, port)| (host, port)).collect();
    masters.sort();
    masters.dedup();
    Ok(masters)
}

/// One node of a cluster, asked directly (not through the cluster client): whether it sees
/// the cluster as serving every slot, and, if it is a replica, whether its link to its
/// master is up. `None`: the node does not answer.
pub async fn node_state(url: &str) -> Option<NodeState> {
    let mut conn = redis::Client::open(url).ok()?.get_multiplexed_async_connection().await.ok()?;
    let cluster: String = redis::cmd("CLUSTER").arg("INFO").query_async(&mut conn).await.ok()?;
    let replication: String = redis::cmd("INFO").arg("replication").query_async(&mut conn).await.ok()?;
    let slots: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut conn).await.ok()?;
    let master_ports = slots
        .iter()
        .filter_map(|range| match range.get(2) {
            Some(redis::Value::Array(master)) => redis::from_redis_value::<u16>(master.get(1)?).ok(),
            _ => None,
        })
        .collect();
    Some(NodeState {
        cluster_ok: cluster.contains("cluster_state:ok"),
        replica: replication.contains("role:slave"),
        replica_in_sync: replication.contains("master_link_status:up"),
        master_ports,
    })
}

/// What `node_state` reads off one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeState {
    pub cluster_ok: bool,
    pub replica: bool,
    pub replica_in_sync: bool,
    /// Ports of the masters this node's slot map names.
    pub master_ports: Vec<u16>,
}

/// Microseconds a server spent in scripts (`EVALSHA` and `EVAL` in `INFO commandstats`)
/// since its statistics were reset; with `reset`, resets them (`CONFIG RESETSTAT`) and
/// answers 0. Asked of one node directly.
pub async fn script_micros(url: &str, reset: bool) -> RedisResult<u64> {
    let mut conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
    if reset {
        redis::cmd("CONFIG").arg("RESETSTAT").query_async::<()>(&mut conn).await?;
        return Ok(0);
    }
    command_stats(&mut conn, |command| ["evalsha", "eval"].contains(&command), "usec=").await
}

/// Calls of `commands` (lower case, as `INFO commandstats` names them; commands scripts
/// run count too) a server has run since its statistics were reset (`script_micros` with
/// `reset`). Asked of one node directly.
pub async fn command_calls(url: &str, commands: &[&str]) -> RedisResult<u64> {
    let mut conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
    command_stats(&mut conn, |command| commands.contains(&command), "calls=").await
}

/// Calls of every command a server has run since its statistics were reset, `INFO` aside
/// (what asking costs): what a load cost the server, whichever commands it took. Asked of one
/// node directly.
pub async fn commands_run(url: &str) -> RedisResult<u64> {
    let mut conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
    command_stats(&mut conn, |command| command != "info", "calls=").await
}

/// The sum of one field over the lines of `INFO commandstats` of the commands `counted` picks.
async fn command_stats(conn: &mut redis::aio::MultiplexedConnection, counted: impl Fn(&str) -> bool, field: &str) -> RedisResult<u64> {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(conn).await?;
    Ok(info
        .lines()
        .filter_map(|line| line.strip_prefix("cmdstat_")?.split_once(':'))
        .filter(|(command, _)| counted(command))
        .filter_map(|(_, stats)| stats.split(',').find_map(|value| value.strip_prefix(field))?.parse::<u64>().ok())
        .sum())
}

/// CPU time (user and system, microseconds) a server has used since it started, from
/// `INFO cpu`: unlike command durations, not inflated when the server waits for a core.
pub async fn cpu_micros(url: &str) -> RedisResult<u64> {
    let mut conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO").arg("cpu").query_async(&mut conn).await?;
    let seconds: f64 = info
        .lines()
        .filter_map(|line| line.strip_prefix("used_cpu_user:").or_else(|| line.strip_prefix("used_cpu_sys:")))
        .filter_map(|value| value.trim().parse::<f64>().ok())
        .sum();
    Ok((seconds * 1e6) as u64)
}

//! Server-side timing for benchmarks: the slowest command Redis ran in a stretch of work,
//! from its slow log (so the figure excludes the network and the client).

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

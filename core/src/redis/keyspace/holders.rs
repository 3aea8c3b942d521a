//! Every holder of a sold-out event, for the api's sold-out short cut: read whole once, then
//! kept up to date from each shard's change log (`holder_changes`, kept by `holders_changed`
//! in `lua/common.lua`), so that a release, a heal or a slot handed out again after sell-out
//! costs an api a read of the users it changed, not of every holder.
//!
//! Once an event is sold out, its holders change only through a release, a heal, a slot
//! given back and handed out again, a new limit or a restore, and each of these changes the
//! shard's `holders_version`. The first three name their users in the log; the last two, and
//! any change made by a script that does not log (an older binary during an upgrade), make
//! the log unable to say what changed, and the shard is read whole again.

use std::collections::HashMap;

use redis::{RedisResult, Value};

use super::{contract, field, holdings::parse_holdings, script_source, EventLayout, Holding};
use crate::redis::RedisConnection;

/// More changed users than this since an api's version: the shard is read whole (as cheap,
/// and the log keeps no more anyway).
const CHANGES_READ_MAX: usize = 10_000;

/// Every holder of an event, with the `holders_version` of each shard its entries are at
/// least as new as.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Holders {
    versions: Vec<i64>,
    /// Each user's first entry (the one a sold-out apply is answered with).
    by_user: HashMap<String, Holding>,
}

impl Holders {
    /// Holders as of the shards' `versions` (for tests: the api loads them from Redis).
    pub fn from_parts(versions: Vec<i64>, by_user: HashMap<String, Holding>) -> Self {
        Self { versions, by_user }
    }

    /// The event's `holders_version` as the gate reports it with a sold-out answer: the sum
    /// of its shards' (each only grows, so equal sums mean equal versions).
    pub fn version(&self) -> i64 {
        self.versions.iter().sum()
    }

    pub fn get(&self, user: &str) -> Option<&Holding> {
        self.by_user.get(user)
    }

    pub fn len(&self) -> usize {
        self.by_user.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_user.is_empty()
    }

    fn set(&mut self, user: String, entries: &str) {
        match super::holdings::representative(parse_holdings(entries)) {
            Some(first) => self.by_user.insert(user, first),
            None => self.by_user.remove(&user),
        };
    }
}

/// What a refresh read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HoldersRead {
    /// Users read because a shard's change log named them.
    pub changed_users: usize,
    /// Shards read whole, their log unable to say what changed.
    pub shards_read_whole: u16,
}

/// Every holder of every shard (`HSCAN` in steps of 1,000, never one long command), or `None`
/// if there are more than `max` (the caller then reads entries one by one).
pub async fn holders(conn: &mut RedisConnection, layout: &EventLayout, max: usize) -> RedisResult<Option<Holders>> {
    let mut holders = Holders { versions: vec![0; usize::from(layout.shard_count())], by_user: HashMap::new() };
    for shard in layout.shards() {
        if !read_shard_whole(conn, layout, shard, &mut holders, max).await? {
            return Ok(None);
        }
    }
    Ok(Some(holders))
}

/// Brings `holders` up to date: of each shard, the users its log names as changed since the
/// shard's version, read with their entries in one read-only script; a shard whose log cannot
/// say is read whole. `None` if there are more than `max` holders now (`holders` is then
/// partly updated: drop it).
pub async fn refresh_holders(
    conn: &mut RedisConnection,
    layout: &EventLayout,
    holders: &mut Holders,
    max: usize,
) -> RedisResult<Option<HoldersRead>> {
    if holders.versions.len() != usize::from(layout.shard_count()) {
        // Another layout: another event of the name.
        *holders = Holders { versions: vec![0; usize::from(layout.shard_count())], by_user: HashMap::new() };
    }
    let mut read = HoldersRead::default();
    for shard in layout.shards() {
        match changes_since(conn, layout, shard, holders.versions[usize::from(shard)]).await? {
            Some((version, changed)) => {
                read.changed_users += changed.len();
                for (user, entries) in changed {
                    holders.set(user, &entries);
                }
                holders.versions[usize::from(shard)] = version;
                if holders.len() > max {
                    return Ok(None);
                }
            }
            None => {
                read.shards_read_whole += 1;
                if !read_shard_whole(conn, layout, shard, holders, max).await? {
                    return Ok(None);
                }
            }
        }
    }
    Ok(Some(read))
}

/// The shard's version and its users changed since `since`, with their entries now; `None`
/// when its log cannot say.
async fn changes_since(
    conn: &mut RedisConnection,
    layout: &EventLayout,
    shard: u16,
    since: i64,
) -> RedisResult<Option<(i64, Vec<(String, String)>)>> {
    let keys = layout.keys(shard);
    let mut call = redis::cmd("EVAL_RO");
    call.arg(script_source!("holder_changes")).arg(contract::HOLDER_CHANGES.keys.len());
    for name in contract::HOLDER_CHANGES.keys {
        call.arg(keys.named(name));
    }
    call.arg(since).arg(CHANGES_READ_MAX);
    let answer: Vec<Value> = conn.query_at(&keys.config, &call).await?;
    let mut answer = answer.into_iter();
    let (Some(version), Some(complete)) = (answer.next(), answer.next()) else {
        return Err(unexpected("a version and whether the log is complete"));
    };
    let (version, complete): (i64, i64) = (redis::from_redis_value(&version)?, redis::from_redis_value(&complete)?);
    if complete != 1 {
        return Ok(None);
    }
    let rest: Vec<String> = answer.map(|value| redis::from_redis_value(&value)).collect::<RedisResult<_>>()?;
    if !rest.len().is_multiple_of(2) {
        return Err(unexpected("pairs of user and entries"));
    }
    let changed = rest.chunks_exact(2).map(|pair| (pair[0].clone(), pair[1].clone())).collect();
    Ok(Some((version, changed)))
}

/// Reads one shard whole into `holders` (its users' old entries dropped first); false past
/// `max` holders. The shard's version is read first: whatever changes during the scan is
/// logged past it, and read again by the next refresh.
async fn read_shard_whole(
    conn: &mut RedisConnection,
    layout: &EventLayout,
    shard: u16,
    holders: &mut Holders,
    max: usize,
) -> RedisResult<bool> {
    let keys = layout.keys(shard);
    let version: Option<i64> = conn.query_at(&keys.config, redis::cmd("HGET").arg(&keys.config).arg(field::HOLDERS_VERSION)).await?;
    holders.by_user.retain(|user, _| layout.home_shard(user) != shard);
    let mut cursor: u64 = 0;
    loop {
        let (next, page): (u64, Vec<(String, String)>) =
            redis::cmd("HSCAN").arg(&keys.users).arg(cursor).arg("COUNT").arg(1000).query_async(conn).await?;
        for (user, entries) in page {
            holders.set(user, &entries);
        }
        if holders.len() > max {
            return Ok(false);
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    holders.versions[usize::from(shard)] = version.unwrap_or(0);
    Ok(true)
}

fn unexpected(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::TypeError, "holder_changes.lua answered something else than", what.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::event::{EventConfig, EventId};
    use crate::redis::keyspace::{apply, release, write_config, GateDecision};

    /// Against the Redis at `REDIS_URL` (the test suite's): a change of the holders made by
    /// a script that does not log (an api of an older version during an upgrade moves only
    /// `holders_version`) makes the next refresh read the shard whole, not miss the change;
    /// the log is trusted again from the next logged change on.
    #[tokio::test]
    async fn a_change_the_log_does_not_hold_makes_the_refresh_read_whole() {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let mut conn = crate::redis::RedisHandle::connect_with_deadline(url, Duration::from_secs(10)).await.unwrap();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let event = EventId::new("core-tests", &format!("holders-{nanos}")).unwrap();
        let layout = EventLayout::single(&event);
        write_config(&mut conn, &event, &EventConfig::open_now(3, "t", Duration::from_secs(60)), false).await.unwrap();
        let mut deadlines = Vec::new();
        for user in ["u1", "u2", "u3"] {
            let (GateDecision::Issued { deadline_ms, .. }, _) =
                apply(&mut conn, &layout, user, Duration::from_secs(60), None).await.unwrap()
            else {
                panic!("issued")
            };
            deadlines.push(deadline_ms);
        }
        let mut holders = holders(&mut conn, &layout, 10).await.unwrap().unwrap();
        // What an older binary's release did: the entry goes, the version moves, no log.
        let config = &layout.keys(0).config;
        let _: () = redis::cmd("HDEL").arg(&layout.keys(0).users).arg("u1").query_async(&mut conn).await.unwrap();
        let _: () = redis::cmd("HINCRBY").arg(config).arg(field::HOLDERS_VERSION).arg(1).query_async(&mut conn).await.unwrap();
        let read = refresh_holders(&mut conn, &layout, &mut holders, 10).await.unwrap().unwrap();
        assert_eq!(read, HoldersRead { changed_users: 0, shards_read_whole: 1 });
        assert!(holders.get("u1").is_none());
        assert!(release(&mut conn, &layout, "u2", 2, deadlines[1]).await.unwrap());
        let read = refresh_holders(&mut conn, &layout, &mut holders, 10).await.unwrap().unwrap();
        assert_eq!(read, HoldersRead { changed_users: 1, shards_read_whole: 0 }, "logged again from the release on");
        assert_eq!(holders, super::holders(&mut conn, &layout, 10).await.unwrap().unwrap());
        // What an older binary's gate did with a slot given back: issued it without moving the
        // version (only `held` tells).
        let _: () = redis::cmd("HSET").arg(&layout.keys(0).users).arg("z").arg("2:w").query_async(&mut conn).await.unwrap();
        let _: () = redis::cmd("INCR").arg(&layout.keys(0).held).query_async(&mut conn).await.unwrap();
        let read = refresh_holders(&mut conn, &layout, &mut holders, 10).await.unwrap().unwrap();
        assert_eq!(read, HoldersRead { changed_users: 0, shards_read_whole: 1 }, "the version did not move, `held` did");
        assert_eq!(holders.get("z").map(|holding| holding.slot), Some(2));
        super::super::delete_event(&mut conn, &event).await.unwrap();
    }
}

//! The apply gate: one atomic script decides whether a user gets a slot; the broker's
//! acknowledgement and a certain failure of the delivery update the user's entry.
//!
//! Unlike the seed's `INCR`-then-compare, the counter never passes the limit: the script
//! checks `count < limit` before it increments, so `count <= limit` holds in Redis itself.
//! The user's entry remembers the slot and how far its delivery got, which makes applies
//! idempotent: a user whose earlier delivery never completed gets the same slot delivered
//! again, a user who holds one gets 409 with it.

use std::time::Duration;

use crate::redis::RedisConnection;
use redis::RedisResult;

use super::{contract, Answer, EventLayout};

/// The gate's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GateDecision {
    /// The user holds `slot`; its record goes to `topic`. `again`: the slot was issued
    /// earlier and its delivery never completed, so this is a second delivery of the same
    /// record.
    Issued {
        slot: i64,
        topic: String,
        /// The event's incarnation: with its id, the event key the record carries.
        incarnation: Option<String>,
        again: bool,
        /// Server time by which this delivery ends; a release must name it.
        deadline_ms: i64,
        /// Which of the user's coupons of the event this is (1 up to the event's
        /// `per_user`): the record and the row carry it, unique per user.
        ordinal: i64,
    },
    /// The user's earlier delivery of `slot` ended unconfirmed (they were answered 503) but its
    /// row is written: confirm it (201) without producing.
    Confirmed {
        slot: i64,
    },
    /// The user holds as many coupons as the event gives one (`per_user`), or another
    /// request of theirs is delivering the last of them: `slot` (the one being delivered, else
    /// the first), and every slot they hold.
    Duplicate {
        slot: i64,
        slots: Vec<i64>,
    },
    /// Every slot is taken; the window ends at `closes_at_ms` (server time). The holders
    /// stay as they are while `holders_version` does (a release, a heal or a restore
    /// changes it).
    SoldOut {
        closes_at_ms: i64,
        holders_version: i64,
    },
    NotOpen,
    Closed,
    /// Deleted (the tombstone says so).
    Deleted,
    /// No configuration at all: never provisioned, or Redis lost its data.
    Missing,
    /// Being verified against SQL (Redis lost data, or the server changed).
    Recovering,
    /// Paused by the shop: nothing is issued until it resumes.
    Paused,
    /// The user's home shard has no stock left, but the event is sharded: other shards may
    /// have some to grant (`grant`). Its window ends at `closes_at_ms`; `holders_version` is
    /// this shard's.
    ShardEmpty {
        closes_at_ms: i64,
        holders_version: i64,
    },
    /// The event's layout is not the one the caller routed by (deleted and created again
    /// with another number of shards): read it again.
    OtherLayout,
}

/// Stock another shard granted to the user's home shard (`grants::grant`), handed to it with
/// the gate call that needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub id: String,
    /// The shards' epoch when it was made: the target takes it only in the same one.
    pub epoch: i64,
    pub slots: Vec<i64>,
}

/// One user's answer of `apply.lua`: code, slot, topic, deadline, incarnation, grant, ordinal.
type GateAnswer = (i64, i64, String, i64, String, i64, i64);

impl GateDecision {
    fn from_answer((code, slot, topic, deadline_ms, incarnation, _granted, ordinal): GateAnswer) -> RedisResult<Self> {
        let incarnation = Some(incarnation).filter(|i| !i.is_empty());
        Ok(match Answer::of("apply", code)? {
            Answer::Issued => Self::Issued { slot, topic, incarnation, again: false, deadline_ms, ordinal },
            Answer::DeliverAgain => Self::Issued { slot, topic, incarnation, again: true, deadline_ms, ordinal },
            Answer::Confirmed => Self::Confirmed { slot },
            Answer::Deleted => Self::Deleted,
            Answer::NotOpen => Self::NotOpen,
            Answer::Closed => Self::Closed,
            // The topic field lists the user's slots.
            Answer::Held => Self::Duplicate { slot, slots: topic.split_ascii_whitespace().filter_map(|s| s.parse().ok()).collect() },
            Answer::SoldOut => Self::SoldOut { closes_at_ms: slot, holders_version: deadline_ms },
            Answer::Recovering => Self::Recovering,
            Answer::Missing => Self::Missing,
            Answer::Paused => Self::Paused,
            Answer::ShardEmpty => Self::ShardEmpty { closes_at_ms: slot, holders_version: deadline_ms },
            Answer::OtherLayout => Self::OtherLayout,
            other => return Err(other.unexpected("apply")),
        })
    }
}

/// Decides one apply on the user's home shard: one Redis round trip. `lease` is how long the
/// delivery of an issued record may take; until it has passed, a repeated apply answers
/// `Duplicate` instead of delivering the record a second time. With `grant`, the shard first
/// takes the granted stock (once); the answer's second half says whether it did.
pub async fn apply(
    conn: &mut RedisConnection,
    layout: &EventLayout,
    user_id: &str,
    lease: Duration,
    grant: Option<&Grant>,
) -> RedisResult<(GateDecision, bool)> {
    let shard = layout.home_shard(user_id);
    let (mut decisions, granted) = apply_many(conn, layout, shard, &[user_id], lease, grant, &unique_id()).await?;
    let decision =
        decisions.pop().ok_or_else(|| redis::RedisError::from((redis::ErrorKind::TypeError, "the gate script answered nothing")))?;
    Ok((decision, granted))
}

/// Decides the applies of `users`, every one homed on `shard`, in one script call: as if
/// each had called `apply` in turn (a user named twice holds one slot), but what holds for
/// the whole shard (its configuration, layout, fencing, pause, `grant`) is read once. An api
/// under load decides a batch of waiting applies per call, so a master's fixed cost per call
/// is paid once per batch instead of once per user. Decisions come in the order of `users`.
/// `call_id` names this call (`unique_id`): run again with the same id within `lease` (a
/// resend after a lost connection), the script answers what it answered the first time.
pub async fn apply_many(
    conn: &mut RedisConnection,
    layout: &EventLayout,
    shard: u16,
    users: &[&str],
    lease: Duration,
    grant: Option<&Grant>,
    call_id: &str,
) -> RedisResult<(Vec<GateDecision>, bool)> {
    if let Some(user) = users.iter().find(|user| layout.home_shard(user) != shard) {
        return Err((redis::ErrorKind::ClientError, "apply on the wrong shard", format!("{user} is not homed on shard {shard}")).into());
    }
    if users.is_empty() {
        return Ok((Vec::new(), false));
    }
    let keys = layout.keys(shard);
    let call = keys.gate_call(call_id);
    let mut invocation = contract::APPLY.invocation(keys, &[("call", call.as_str())]);
    invocation.arg(lease.as_millis() as u64).arg(shard).arg(layout.shard_count()).arg(users.len());
    for user in users {
        invocation.arg(*user);
    }
    if let Some(grant) = grant {
        invocation.arg(&grant.id).arg(grant.epoch).arg(&grant.slots);
    }
    let answers: Vec<GateAnswer> = invocation.invoke_async(conn).await?;
    if answers.len() != users.len() {
        let counts = format!("{} answers for {} users", answers.len(), users.len());
        return Err((redis::ErrorKind::TypeError, "unexpected gate script answer", counts).into());
    }
    let granted = answers.iter().any(|answer| answer.5 == 1);
    let decisions = answers.into_iter().map(GateDecision::from_answer).collect::<RedisResult<Vec<_>>>()?;
    Ok((decisions, granted))
}

/// An id no other call or grant of any process shares: the process, its start, a counter.
pub fn unique_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static PROCESS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
        format!("{:x}-{nanos:x}", std::process::id())
    });
    format!("{}-{}", *PROCESS, NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// Records that the broker acknowledged the records of `acks` (user id, slot), every one of
/// them homed on `shard`: one round trip for the lot, so an api acknowledges a burst's
/// deliveries with a few calls per master instead of one per coupon. Returns how many
/// entries changed; sending it again changes nothing.
pub async fn ack(conn: &mut RedisConnection, layout: &EventLayout, shard: u16, acks: &[(String, i64)]) -> RedisResult<usize> {
    if let Some((user, _)) = acks.iter().find(|(user, _)| layout.home_shard(user) != shard) {
        return Err(
            (redis::ErrorKind::ClientError, "acknowledgement on the wrong shard", format!("{user} is not homed on shard {shard}")).into()
        );
    }
    if acks.is_empty() {
        return Ok(0);
    }
    let mut invocation = contract::ACK.invocation(layout.keys(shard), &[]);
    for (user, slot) in acks {
        invocation.arg(user).arg(slot);
    }
    let changed: i64 = invocation.invoke_async(conn).await?;
    Ok(changed.max(0) as usize)
}

/// Undoes an issued slot whose record never reached the broker: only the user's pending
/// entry of exactly that slot, and only while its deadline is still `deadline_ms` (the
/// failed delivery's; a later delivery of the same record moved it). Returns whether it was
/// released (to the user's home shard's stock).
pub async fn release(conn: &mut RedisConnection, layout: &EventLayout, user_id: &str, slot: i64, deadline_ms: i64) -> RedisResult<bool> {
    let keys = layout.user_keys(user_id).1;
    let removed: i64 = contract::RELEASE.invocation(keys, &[]).arg(user_id).arg(slot).arg(deadline_ms).invoke_async(conn).await?;
    Ok(Answer::of("release", removed)? == Answer::Done)
}

/// Loads the gate script into `conn`'s server and returns the arguments of
/// `redis-benchmark ... EVALSHA <args>` that run it against `event` with a random user
/// (`__rand_int__`): the benchmark's baseline, the script alone.
pub async fn prepare_gate_benchmark(conn: &mut RedisConnection, event: &crate::event::EventId) -> RedisResult<Vec<String>> {
    let sha: String = redis::cmd("SCRIPT").arg("LOAD").arg(super::script_source!("apply")).query_async(conn).await?;
    let layout = EventLayout::single(event);
    let keys = layout.home();
    let call = keys.gate_call("__rand_int__");
    let mut args = vec![sha, contract::APPLY.keys.len().to_string()];
    // The KEYS by name, in the contract's order (the gate call's answers under a random id).
    args.extend(contract::APPLY.keys.iter().map(|name| if *name == "call" { call.clone() } else { keys.named(name).to_owned() }));
    // lease_ms, shard, shards, n, then the one user.
    args.extend(["5000", "0", "1", "1", "user:__rand_int__"].map(String::from));
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventConfig, EventId};
    use crate::redis::keyspace::{write_config, EventKeys};

    /// Against the Redis at `REDIS_URL` (the test suite's): a slot on the free list above a
    /// limit lowered behind the gate's back (a restore from an older backup could do it) is
    /// dropped, never handed out.
    #[tokio::test]
    async fn the_free_list_never_hands_out_a_slot_above_the_limit() {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let mut conn = crate::redis::RedisHandle::connect_with_deadline(url, Duration::from_secs(10)).await.unwrap();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let event = EventId::new("core-tests", &format!("free-{nanos}")).unwrap();
        let layout = EventLayout::single(&event);
        write_config(&mut conn, &event, &EventConfig::open_now(5, "t", Duration::from_secs(60)), false).await.unwrap();
        let lease = Duration::from_secs(60);
        let mut deadlines = Vec::new();
        for user in 1..=5 {
            let (GateDecision::Issued { deadline_ms, .. }, _) = apply(&mut conn, &layout, &format!("u{user}"), lease, None).await.unwrap()
            else {
                panic!("issued")
            };
            deadlines.push(deadline_ms);
        }
        let exhausted: i64 =
            redis::cmd("HGET").arg(EventKeys::of(&event).config).arg("holders_version").query_async(&mut conn).await.unwrap();
        assert!(release(&mut conn, &layout, "u5", 5, deadlines[4]).await.unwrap());
        assert!(release(&mut conn, &layout, "u4", 4, deadlines[3]).await.unwrap());
        let _: () = redis::cmd("HSET").arg(EventKeys::of(&event).config).arg("limit").arg(3).query_async(&mut conn).await.unwrap();
        // Sold out, and the two releases changed the holders twice.
        let (sold_out, _) = apply(&mut conn, &layout, "late", lease, None).await.unwrap();
        assert!(matches!(sold_out, GateDecision::SoldOut { holders_version, .. } if holders_version == exhausted + 2), "{sold_out:?}");
        super::super::delete_event(&mut conn, &event).await.unwrap();
    }

    /// The arguments `bench` gives `redis-benchmark` run the gate: the KEYS in the order of
    /// the script's contract (they were once written out by hand, and fell behind it).
    #[tokio::test]
    async fn the_gate_benchmark_runs_the_gate() {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let mut conn = crate::redis::RedisHandle::connect_with_deadline(url, Duration::from_secs(10)).await.unwrap();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let event = EventId::new("core-tests", &format!("bench-{nanos}")).unwrap();
        write_config(&mut conn, &event, &EventConfig::open_now(5, "t", Duration::from_secs(60)), false).await.unwrap();
        let args = prepare_gate_benchmark(&mut conn, &event).await.unwrap();
        let mut call = redis::cmd("EVALSHA");
        for arg in &args {
            call.arg(arg.replace("__rand_int__", "7"));
        }
        let answers: Vec<GateAnswer> = call.query_async(&mut conn).await.unwrap();
        assert_eq!(answers.len(), 1);
        assert!(matches!(GateDecision::from_answer(answers[0].clone()).unwrap(), GateDecision::Issued { slot: 1, .. }), "{answers:?}");
        super::super::delete_event(&mut conn, &event).await.unwrap();
    }

    /// An earlier object's state is removed only when it is finished, and a configuration
    /// keeps the incarnation it was created with.
    #[tokio::test]
    async fn incarnations_are_kept_and_retired_only_when_finished() {
        use crate::event::EventKey;
        use crate::redis::keyspace::{mark_written, presence, retire_event, ConfigWrite, EventPresence, Retirement};
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let mut conn = crate::redis::RedisHandle::connect_with_deadline(url, Duration::from_secs(10)).await.unwrap();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let event = EventId::new("core-tests", &format!("retire-{nanos}")).unwrap();
        let first = EventConfig { incarnation: Some("uid-a".into()), ..EventConfig::open_now(5, "t", Duration::from_secs(60)) };
        assert_eq!(write_config(&mut conn, &event, &first, false).await.unwrap(), ConfigWrite::Created);
        let other = EventConfig { incarnation: Some("uid-b".into()), ..first.clone() };
        assert_eq!(write_config(&mut conn, &event, &other, false).await.unwrap(), ConfigWrite::RefusedOtherIncarnation);
        let (GateDecision::Issued { slot: 1, incarnation, .. }, _) =
            apply(&mut conn, &EventLayout::single(&event), "u1", Duration::from_secs(60), None).await.unwrap()
        else {
            panic!("issued")
        };
        assert_eq!(incarnation.as_deref(), Some("uid-a"), "the record carries the incarnation");

        assert_eq!(retire_event(&mut conn, &event, Some("uid-b")).await.unwrap(), Retirement::OtherIncarnation);
        assert_eq!(retire_event(&mut conn, &event, Some("uid-a")).await.unwrap(), Retirement::StillOpen);
        let closed = EventConfig { end: jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1), ..first.clone() };
        write_config(&mut conn, &event, &closed, false).await.unwrap();
        assert_eq!(retire_event(&mut conn, &event, Some("uid-a")).await.unwrap(), Retirement::Unwritten);
        // A row of another incarnation marks nothing; the event's own does.
        let stranger = EventKey::new(event.clone(), Some("uid-b")).unwrap();
        assert_eq!(mark_written(&mut conn, &stranger, &EventLayout::single(&event), &[("u1", 1)]).await.unwrap(), 0);
        let own = EventKey::new(event.clone(), Some("uid-a")).unwrap();
        assert_eq!(mark_written(&mut conn, &own, &EventLayout::single(&event), &[("u1", 1)]).await.unwrap(), 1);
        assert_eq!(retire_event(&mut conn, &event, Some("uid-a")).await.unwrap(), Retirement::Removed);
        assert_eq!(presence(&mut conn, &event).await.unwrap(), EventPresence::Deleted);
        assert_eq!(write_config(&mut conn, &event, &other, false).await.unwrap(), ConfigWrite::Created, "the name is free again");
        super::super::delete_event(&mut conn, &event).await.unwrap();
    }
}

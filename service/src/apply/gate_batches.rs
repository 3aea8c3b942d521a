//! Applies waiting for the same shard, decided together.
//!
//! At a flash crowd's peak many applies of one event wait for the gate at once, each one
//! script call on its home shard's master. Most of such a call's time on the master is the
//! same for every user: the call itself, reading the event's configuration, the fencing
//! check. Here the applies of one shard queue in front of one writer: while `IN_FLIGHT`
//! calls for the shard are under way, the applies that come meanwhile go together in the
//! next call (at most `BATCH_MAX`), which pays that part once (`keyspace::apply_many`). When
//! the shard is not that busy an apply goes at once, alone, as before: nothing waits on a
//! timer, so a quiet event answers as fast as ever and a busy one costs its master less per
//! coupon.
//!
//! A batch decides its users one after the other in one script, exactly as separate calls
//! in that order would; a call that fails fails its applies as one call each would have (the
//! api answers 503, and a call Redis ran whose answer was lost leaves its users' entries
//! pending: their next apply after the lease delivers; a resent call answers what its first
//! run answered). When a call fails, the applies still queued behind it are answered at once
//! with an error instead of each waiting for a master that just failed, and an apply that
//! waited `QUEUE_WAIT_MAX` is answered 503 without a call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use coupon_core::redis::keyspace::{self, EventLayout, GateDecision};
use coupon_core::redis::{RedisError, RedisHandle};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Calls one api process keeps under way per shard: enough to keep a master busy across the
/// round trip, few enough that a crowd's applies queue up into batches.
const IN_FLIGHT: usize = 4;
/// Most users one call decides: a few µs of script time each, so one call stays well under
/// a millisecond on the master (other events' applies wait behind it).
const BATCH_MAX: usize = 32;
/// A shard's writer stops after this long without an apply (it starts again on the next).
const IDLE: Duration = Duration::from_secs(30);
/// Longest an apply waits in the queue before its call starts; longer, it is answered 503
/// without one. With the Redis client's 2 s response timeout, the gate stays within the
/// 3 s a request keeps for Redis (`ApiSettings::check`): a 408 never hides an issued
/// coupon, and a master that cannot keep up sheds load instead of queueing without end.
const QUEUE_WAIT_MAX: Duration = Duration::from_millis(500);

type Answer = Result<GateDecision, RedisError>;

/// One apply waiting for its shard's writer.
struct Waiting {
    user: String,
    queued_at: Instant,
    answer: oneshot::Sender<Answer>,
}

/// Which writer an apply waits for: its event, the layout's number of shards, its home shard.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct ShardKey {
    event: String,
    shards: u16,
    shard: u16,
}

/// A running writer: its queue, and an id that tells it from a later writer of the same key.
struct Writer {
    id: u64,
    queue: mpsc::UnboundedSender<Waiting>,
}

type Registry = Mutex<HashMap<ShardKey, Writer>>;

/// The per-shard writers of one api process.
pub struct GateBatches {
    redis: RedisHandle,
    lease: Duration,
    /// How long a writer waits for an apply before it stops (`IDLE`).
    idle: Duration,
    writers: Arc<Registry>,
    next_id: AtomicU64,
}

impl GateBatches {
    pub fn new(redis: RedisHandle, lease: Duration) -> Self {
        Self { redis, lease, idle: IDLE, writers: Arc::default(), next_id: AtomicU64::new(0) }
    }

    /// Decides `user`'s apply on their home shard of `layout`, with whatever other applies
    /// of that shard are waiting. Must be called within the Tokio runtime.
    pub async fn decide(&self, layout: &Arc<EventLayout>, user: &str) -> Answer {
        let key = ShardKey { event: layout.event().to_string(), shards: layout.shard_count(), shard: layout.home_shard(user) };
        let (answer, answered) = oneshot::channel();
        let mut waiting = Waiting { user: user.to_owned(), queued_at: Instant::now(), answer };
        loop {
            let (id, queue) = self.writer(&key, layout);
            match queue.send(waiting) {
                Ok(()) => break,
                // The writer stopped, idle, just now: forget it and start another.
                Err(mpsc::error::SendError(back)) => {
                    forget(&self.writers, &key, id);
                    waiting = back;
                }
            }
        }
        answered.await.unwrap_or_else(|_| Err(failed("the gate's writer stopped before answering")))
    }

    /// The writer of `key`, started if there is none.
    fn writer(&self, key: &ShardKey, layout: &Arc<EventLayout>) -> (u64, mpsc::UnboundedSender<Waiting>) {
        let mut writers = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(writer) = writers.get(key) {
            return (writer.id, writer.queue.clone());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (queue, received) = mpsc::unbounded_channel();
        let shard = Shard { key: key.clone(), id, layout: layout.clone(), redis: self.redis.clone(), lease: self.lease, idle: self.idle };
        tokio::spawn(shard.write(received, Arc::downgrade(&self.writers)));
        writers.insert(key.clone(), Writer { id, queue: queue.clone() });
        (id, queue)
    }
}

/// Removes the writer `id` of `key`, if it is still the registered one.
fn forget(writers: &Registry, key: &ShardKey, id: u64) {
    let mut writers = writers.lock().unwrap_or_else(|e| e.into_inner());
    if writers.get(key).is_some_and(|writer| writer.id == id) {
        writers.remove(key);
    }
}

fn failed(detail: &str) -> RedisError {
    RedisError::from((redis::ErrorKind::IoError, "gate call failed", detail.to_owned()))
}

/// The writer of one shard.
struct Shard {
    key: ShardKey,
    id: u64,
    layout: Arc<EventLayout>,
    redis: RedisHandle,
    lease: Duration,
    idle: Duration,
}

impl Shard {
    /// Takes what is queued whenever fewer than `IN_FLIGHT` calls are under way, and calls.
    async fn write(self, mut received: mpsc::UnboundedReceiver<Waiting>, writers: Weak<Registry>) {
        let this = Arc::new(self);
        let permits = Arc::new(Semaphore::new(IN_FLIGHT));
        // When the last call that failed ended: applies queued before then waited behind it.
        let failed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
        let mut taken = Vec::with_capacity(BATCH_MAX);
        loop {
            let permit = permits.clone().acquire_owned().await.expect("the semaphore is never closed");
            match tokio::time::timeout(this.idle, received.recv_many(&mut taken, BATCH_MAX)).await {
                Ok(0) => return, // the api is gone
                Ok(_) => {
                    // Not sent: applies queued before a call failed (they waited behind a
                    // master that just failed) and applies that waited too long.
                    let failure = *failed_at.lock().unwrap_or_else(|e| e.into_inner());
                    let now = Instant::now();
                    let (sendable, unsent): (Vec<_>, Vec<_>) = taken.drain(..).partition(|waiting| {
                        failure.is_none_or(|failure| waiting.queued_at > failure) && now - waiting.queued_at <= QUEUE_WAIT_MAX
                    });
                    for waiting in unsent {
                        let why = if now - waiting.queued_at > QUEUE_WAIT_MAX {
                            "waited too long for the gate"
                        } else {
                            "an earlier call to this shard failed"
                        };
                        let _ = waiting.answer.send(Err(failed(why)));
                    }
                    taken = sendable;
                    if taken.is_empty() {
                        continue;
                    }
                    let batch = std::mem::replace(&mut taken, Vec::with_capacity(BATCH_MAX));
                    let (this, failed_at) = (this.clone(), failed_at.clone());
                    tokio::spawn(async move {
                        if !this.call(batch).await {
                            *failed_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                        }
                        drop(permit);
                    });
                }
                Err(_idle) => {
                    // Stop taking applies; those sent before the queue closed still go.
                    received.close();
                    if let Some(writers) = writers.upgrade() {
                        forget(&writers, &this.key, this.id);
                    }
                    // A closed queue still yields what was sent before, then `None`.
                    while let Some(waiting) = received.recv().await {
                        taken.push(waiting);
                    }
                    while !taken.is_empty() {
                        let rest = taken.split_off(taken.len().min(BATCH_MAX));
                        this.call(std::mem::replace(&mut taken, rest)).await;
                    }
                    return;
                }
            }
        }
    }

    /// Decides `batch` in one call and answers each apply. Returns false if the call failed.
    async fn call(&self, batch: Vec<Waiting>) -> bool {
        let users: Vec<&str> = batch.iter().map(|waiting| waiting.user.as_str()).collect();
        let decided = match self.redis.get() {
            Some(mut conn) => {
                let call = keyspace::unique_id();
                keyspace::apply_many(&mut conn, &self.layout, self.key.shard, &users, self.lease, None, &call).await
            }
            None => Err(failed("Redis is not connected")),
        };
        match decided {
            Ok((decisions, _)) => {
                for (waiting, decision) in batch.into_iter().zip(decisions) {
                    let _ = waiting.answer.send(Ok(decision));
                }
                true
            }
            Err(error) => {
                let detail = error.to_string();
                for waiting in batch {
                    let _ = waiting.answer.send(Err(RedisError::from((error.kind(), "gate call failed", detail.clone()))));
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coupon_core::event::{EventConfig, EventId};

    /// Against the Redis at `REDIS_URL` (the test suite's): a writer that stopped for want of
    /// applies leaves the registry, and the next apply of its shard starts another that
    /// carries on where it left (the next slot, the same user a duplicate).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writer_stopped_idle_is_started_again_by_the_next_apply() {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let redis = RedisHandle::connect_in_background(url.as_str()).unwrap();
        let mut conn = redis.wait().await;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let event = EventId::new("gate-batches", &format!("idle-{nanos}")).unwrap();
        keyspace::write_config(&mut conn, &event, &EventConfig::open_now(5, "t", Duration::from_secs(60)), false).await.unwrap();
        let layout = Arc::new(EventLayout::single(&event));
        let batches = GateBatches { idle: Duration::from_millis(50), ..GateBatches::new(redis, Duration::from_secs(60)) };

        let first = batches.decide(&layout, "u1").await.unwrap();
        assert!(matches!(first, GateDecision::Issued { slot: 1, .. }), "{first:?}");
        let stopped = async {
            while !batches.writers.lock().unwrap().is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), stopped).await.expect("the idle writer left the registry");
        let second = batches.decide(&layout, "u2").await.unwrap();
        assert!(matches!(second, GateDecision::Issued { slot: 2, .. }), "{second:?}");
        assert_eq!(batches.decide(&layout, "u1").await.unwrap(), GateDecision::Duplicate { slot: 1, slots: vec![1] });
    }
}

//! The broker's acknowledgements, written to Redis in batches.
//!
//! Every 201 ends with one write to the user's home shard: the entry goes from pending to
//! acknowledged. Written one by one, these were half of a master's script calls at a flash
//! crowd's peak. Here one writer takes every acknowledgement that arrived while its previous
//! batch was under way and runs one script per shard for them: under load, a master runs one
//! acknowledgement call per batch instead of one per coupon; when idle, an acknowledgement is
//! written at once, as before (nothing waits on a timer).
//!
//! Nothing waits for these writes: the user has their answer. An entry whose acknowledgement
//! never lands (Redis unreachable through every retry, or the process stopped first) stays
//! pending: it is marked when its row is written, or delivered again by the user's next apply
//! after its lease, exactly as a single acknowledgement that failed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use coupon_core::redis::keyspace::{self, EventLayout};
use coupon_core::redis::{RedisConnection, RedisHandle};
use tokio::sync::mpsc;

/// Most acknowledgements one script call carries (a few µs of script time each): keeps every
/// call short on a master that other events' applies share.
const BATCH_MAX: usize = 256;
/// Longest the writer waits for one round's writes before it takes the next batch.
const ROUND_WAIT: Duration = Duration::from_millis(250);

/// One delivery the broker acknowledged.
struct Acknowledgement {
    layout: Arc<EventLayout>,
    user: String,
    slot: i64,
}

/// The acknowledgements of one shard within one batch.
struct ShardBatch {
    layout: Arc<EventLayout>,
    shard: u16,
    acks: Vec<(String, i64)>,
}

/// Queue of acknowledgements to write (cheap to call from any request).
pub struct Acknowledgements {
    queue: mpsc::UnboundedSender<Acknowledgement>,
}

impl Acknowledgements {
    /// Starts the writer: must be called within the Tokio runtime.
    pub fn start(redis: RedisHandle) -> Self {
        let (queue, received) = mpsc::unbounded_channel();
        tokio::spawn(write_batches(received, redis));
        Self { queue }
    }

    /// Queues the acknowledgement of `user`'s record of `slot`.
    pub fn push(&self, layout: Arc<EventLayout>, user: String, slot: i64) {
        if let Err(mpsc::error::SendError(ack)) = self.queue.send(Acknowledgement { layout, user, slot }) {
            tracing::warn!(slot, user = ack.user, "acknowledgement writer stopped; the entry stays pending until its row is written");
        }
    }
}

/// The writer: takes what is queued (up to `BATCH_MAX`), groups it by shard and writes each
/// group with one call, all groups at once, each in a task of its own that retries it. It
/// takes the next batch once they are written, or after `ROUND_WAIT` if one is slow: an
/// unreachable master never holds up another one's acknowledgements for longer.
async fn write_batches(mut received: mpsc::UnboundedReceiver<Acknowledgement>, redis: RedisHandle) {
    let mut taken = Vec::with_capacity(BATCH_MAX);
    while received.recv_many(&mut taken, BATCH_MAX).await > 0 {
        let writes: Vec<_> =
            by_shard(taken.drain(..)).into_iter().map(|batch| tokio::spawn(write_with_retries(redis.clone(), batch))).collect();
        let _ = tokio::time::timeout(ROUND_WAIT, futures::future::join_all(writes)).await;
    }
}

/// Groups acknowledgements by event layout and home shard, in the order they came.
fn by_shard(acks: impl Iterator<Item = Acknowledgement>) -> Vec<ShardBatch> {
    let mut batches: Vec<ShardBatch> = Vec::new();
    let mut index: HashMap<(*const EventLayout, u16), usize> = HashMap::new();
    for ack in acks {
        let shard = ack.layout.home_shard(&ack.user);
        let at = *index.entry((Arc::as_ptr(&ack.layout), shard)).or_insert_with(|| {
            batches.push(ShardBatch { layout: ack.layout.clone(), shard, acks: Vec::new() });
            batches.len() - 1
        });
        batches[at].acks.push((ack.user, ack.slot));
    }
    batches
}

async fn write_with_retries(redis: RedisHandle, batch: ShardBatch) {
    let write = |mut conn: RedisConnection| {
        let batch = &batch;
        async move { keyspace::ack(&mut conn, &batch.layout, batch.shard, &batch.acks).await }
    };
    let failed = |error: &redis::RedisError| {
        tracing::warn!(%error, event = %batch.layout.event(), shard = batch.shard, count = batch.acks.len(), "acknowledging deliveries failed, retrying");
    };
    if super::delivery::with_retries(&redis, write, failed).await.is_none() {
        tracing::error!(event = %batch.layout.event(), shard = batch.shard, count = batch.acks.len(), "could not acknowledge deliveries; their entries stay pending until their rows are written");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coupon_core::event::EventId;

    fn ack(layout: &Arc<EventLayout>, user: &str, slot: i64) -> Acknowledgement {
        Acknowledgement { layout: layout.clone(), user: user.into(), slot }
    }

    #[test]
    fn acknowledgements_are_grouped_by_layout_and_home_shard_in_order() {
        let sharded = Arc::new(EventLayout::new(&EventId::new("shop", "sale").unwrap(), 3));
        let single = Arc::new(EventLayout::single(&EventId::new("shop", "other").unwrap()));
        let users: Vec<String> = (0..60).map(|i| format!("user-{i}")).collect();
        let mut acks: Vec<Acknowledgement> = users.iter().enumerate().map(|(i, u)| ack(&sharded, u, i as i64 + 1)).collect();
        acks.push(ack(&single, "user-0", 7));
        let batches = by_shard(acks.into_iter());
        assert_eq!(batches.len(), 4, "three shards of one event and the other event's one");
        let mut seen = 0;
        for batch in &batches {
            for (user, slot) in &batch.acks {
                assert_eq!(batch.layout.home_shard(user), batch.shard);
                if Arc::ptr_eq(&batch.layout, &sharded) {
                    assert_eq!(users[*slot as usize - 1], *user, "slot and user stay together");
                }
            }
            let slots: Vec<i64> = batch.acks.iter().map(|(_, slot)| *slot).collect();
            assert!(slots.windows(2).all(|w| w[0] < w[1]) || batch.acks.len() == 1, "in the order they came");
            seen += batch.acks.len();
        }
        assert_eq!(seen, 61);
        assert!(batches.iter().any(|b| Arc::ptr_eq(&b.layout, &single) && b.acks == vec![("user-0".to_string(), 7)]));
    }
}

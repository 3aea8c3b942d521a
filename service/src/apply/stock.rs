//! The stock path: the gate of the user's home shard, and on a sharded event whose home shard
//! ran out, stock from the other shards (a grant), until the apply is decided, the event is
//! sold out everywhere, or the search ran out of tries or time.

use std::sync::Arc;
use std::time::Duration;

use coupon_core::event::EventId;
use coupon_core::redis::keyspace::{self, EventLayout, GateDecision, Grant, GrantVerdict};
use coupon_core::redis::{RedisConnection, RedisError};

use super::ApplyService;

/// Stock requests one apply may make on a sharded event before it answers 503: each finds
/// the shard with the most stock and takes half of it, so a few suffice even when every
/// user hashes to one shard; more are needed only while other applies race for the last
/// coupons.
const STOCK_REQUESTS: u32 = 8;
/// Most slots one grant moves (half of the richest shard's stock, at most this).
const GRANT_MAX: i64 = 1_000;
/// Longest an apply spends looking for stock on a sharded event, from its home shard's first
/// "no stock left" (waiting for its turn, reading the shards, asking for a grant), before it
/// answers 503 without another gate call: applies that find their shard empty while another
/// shard's master stalls do not queue without end behind each other's stock requests, and
/// the gate's time stays bounded (two gate calls and this), so the request timeout, which
/// the defaults leave 10 s for Redis, never cuts an apply whose coupon was issued. A client
/// answered 503 applies again.
const STOCK_WAIT_MAX: Duration = Duration::from_millis(500);

impl ApplyService {
    /// Asks the user's home shard. When it has no stock left on a sharded event, asks the
    /// other shards for some (`find_stock`) and asks again with the grant, until it decides,
    /// the event is sold out everywhere, or `STOCK_REQUESTS` ran out.
    pub(super) async fn gate(
        &self,
        conn: &mut RedisConnection,
        event: &EventId,
        user_id: &str,
    ) -> Result<(Arc<EventLayout>, GateDecision), RedisError> {
        let mut layout = self.layout(conn, event).await?;
        let mut grant: Option<(u16, Grant)> = None;
        let mut layout_read_again = false;
        let mut requests = 0;
        let mut stock_turn = None;
        // Set when the home shard first answers that it has no stock left.
        let mut stock_deadline = None;
        loop {
            // A grant goes with the one apply that asked for it; every other apply waits
            // for its shard's next call, with the others waiting then. So does an apply to a
            // name this process has no layout for (not provisioned, or just deleted): it
            // starts no writer.
            let (decision, taken) = match &grant {
                Some((_, grant)) => keyspace::apply(conn, &layout, user_id, self.lease, Some(grant)).await?,
                None if self.layouts.get(event.name()).is_some() => (self.gate_batches.decide(&layout, user_id).await?, false),
                None => keyspace::apply(conn, &layout, user_id, self.lease, None).await?,
            };
            if let (Some((source, grant)), true) = (grant.take(), taken) {
                self.settle_in_background(layout.clone(), source, grant.id);
            }
            match decision {
                // A shard without configuration: the event may have been deleted (its tombstone
                // is on the home shard only) or created again with another layout.
                GateDecision::OtherLayout | GateDecision::Missing
                    if !layout_read_again && (layout.is_sharded() || decision == GateDecision::OtherLayout) =>
                {
                    layout_read_again = true;
                    self.layouts.remove(event.name());
                    layout = self.layout(conn, event).await?;
                }
                GateDecision::ShardEmpty { closes_at_ms, .. } if requests < STOCK_REQUESTS => {
                    requests += 1;
                    let home = layout.home_shard(user_id);
                    let stock_deadline = *stock_deadline.get_or_insert_with(|| tokio::time::Instant::now() + STOCK_WAIT_MAX);
                    // Every step of the search is bounded (`STOCK_WAIT_MAX`); one cut short
                    // answers 503. A grant asked for and not awaited is closed by healing.
                    if stock_turn.is_none() {
                        // One stock request per shard at a time in this process: the applies
                        // that find the shard empty meanwhile wait for it and ask the shard
                        // again, served by the stock it brought, instead of each draining
                        // the others by half.
                        let Ok(turn) = tokio::time::timeout_at(stock_deadline, self.stock_requests.turn(event.name(), home)).await else {
                            return Ok((layout, decision));
                        };
                        stock_turn = Some(turn);
                        continue;
                    }
                    let Ok(stock) = tokio::time::timeout_at(stock_deadline, self.find_stock(conn, &layout, home)).await else {
                        return Ok((layout, decision));
                    };
                    match stock? {
                        Stock::Granted(source, found) => grant = Some((source, found)),
                        Stock::SoldOut { holders_version } => {
                            return Ok((layout, GateDecision::SoldOut { closes_at_ms, holders_version }));
                        }
                        // Slots in flight between shards, or being given back: ask again.
                        Stock::Elsewhere => {
                            let pause = Duration::from_millis(5 * u64::from(requests));
                            if tokio::time::timeout_at(stock_deadline, tokio::time::sleep(pause)).await.is_err() {
                                return Ok((layout, decision));
                            }
                        }
                    }
                }
                decision => return Ok((layout, decision)),
            }
        }
    }

    /// Looks for stock for the empty shard `target`: sold out when no shard has a slot to
    /// hand out (slots held, in flight in a grant, or kept by a heal for a row whose entry
    /// is gone all count as taken), else half of the richest other shard's stock (at most
    /// `GRANT_MAX`). Reads every shard once: paid only by applies that find their shard
    /// empty, and answered from memory once the event is sold out everywhere.
    async fn find_stock(&self, conn: &mut RedisConnection, layout: &EventLayout, target: u16) -> Result<Stock, RedisError> {
        let (mut available, mut recovering) = (0, false);
        let mut versions = Vec::with_capacity(usize::from(layout.shard_count()));
        let mut richest: Option<(u16, i64)> = None;
        for shard in layout.shards() {
            let Some(stock) = keyspace::stock(conn, layout, shard).await? else { continue };
            available += stock.available;
            recovering |= stock.recovering;
            versions.push(stock.holders_version);
            if shard != target && !stock.recovering && stock.available > richest.map_or(0, |(_, most)| most) {
                richest = Some((shard, stock.available));
            }
        }
        if available == 0 && !recovering {
            // The shards were read one after the other: a slot given back on a shard read
            // early could have been taken on one read later. Sold out only if no shard's
            // holders changed meanwhile (a release or a heal changes `holders_version`).
            let mut again = Vec::with_capacity(versions.len());
            for shard in layout.shards() {
                if let Some(stock) = keyspace::stock(conn, layout, shard).await? {
                    again.push(stock.holders_version);
                }
            }
            if again != versions {
                return Ok(Stock::Elsewhere);
            }
            return Ok(Stock::SoldOut { holders_version: versions.iter().sum() });
        }
        let Some((source, available)) = richest else { return Ok(Stock::Elsewhere) };
        let wanted = ((available + 1) / 2).clamp(1, GRANT_MAX);
        Ok(match keyspace::grant(conn, layout, source, target, wanted, self.lease, &keyspace::unique_id()).await? {
            Some(grant) => {
                self.metrics.stock_grants.inc();
                Stock::Granted(source, grant)
            }
            None => Stock::Elsewhere,
        })
    }

    /// Settles a grant its target took (healing settles those nobody did).
    fn settle_in_background(&self, layout: Arc<EventLayout>, source: u16, id: String) {
        let redis = self.redis.clone();
        tokio::spawn(async move {
            if let Some(mut conn) = redis.get() {
                if let Err(error) = keyspace::settle_grant(&mut conn, &layout, source, &id, GrantVerdict::Taken).await {
                    tracing::warn!(%error, grant = id, "could not settle a grant; healing will");
                }
            }
        });
    }
}

/// What `find_stock` found.
enum Stock {
    /// `source` granted this stock to the empty shard.
    Granted(u16, Grant),
    /// No shard has a slot to hand out: sold out everywhere.
    SoldOut { holders_version: i64 },
    /// Another shard's stock is out of reach for now (recovering, being given back, or
    /// taken by other applies while the shards were read): ask again.
    Elsewhere,
}

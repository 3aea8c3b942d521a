//! The consumer's verification pass, once a second over every provisioned event: the
//! fencing check for events nobody applies to, the restore of events marked recovering,
//! healing of overdue entries, and the per-event metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use coupon_core::event::EventId;
use coupon_core::redis::keyspace::{self, EventCounters};
use coupon_core::redis::ConnectionManager;

use super::healing::{heal_entries, HEAL_CHUNK};
use super::kafka::{topic_drained, GroupConsumer};
use super::recovery::{restore_event, RecoveryError};
use super::writer::BatchWriter;
use crate::metrics::{EventLabel, Metrics};

/// One pass. `settle`: how long after an entry's delivery deadline (or a recovering mark)
/// the consumer waits before trusting that the topic holds every record that will ever be
/// written for it.
pub async fn verify_events(
    writer: &mut BatchWriter,
    conn: &mut ConnectionManager,
    consumer: &Arc<GroupConsumer>,
    settle: Duration,
    metrics: &Metrics,
) -> Result<(), RecoveryError> {
    // Read before any drain check: entries overdue at this time were delivered (or never
    // will be) before the drain check looks at the topic.
    let now_ms = keyspace::server_time_ms(conn).await?;
    let cutoff_ms = now_ms - settle.as_millis() as i64;
    let mut drained: HashMap<String, bool> = HashMap::new();
    for member in keyspace::registered_events(conn).await? {
        let Ok(event) = member.parse::<EventId>() else {
            keyspace::unregister(conn, &member).await?;
            continue;
        };
        let Some(recovering) = keyspace::fence(conn, &event).await? else { continue };
        let Some(counters) = keyspace::counters(conn, &event).await? else { continue };
        export(metrics, &member, &counters);
        if recovering {
            if !is_drained(&mut drained, consumer, &counters.topic).await? {
                continue;
            }
            if let Some(report) = restore_event(writer.store(), conn, &event, settle).await? {
                writer.forget(&member);
                tracing::warn!(event = %event, count = report.count, rows = report.rows, free = report.free, calls = report.calls, longest_call = ?report.longest_call, "restored the event's Redis state from SQL");
            }
            continue;
        }
        if counters.unwritten == 0 {
            continue;
        }
        let overdue = keyspace::overdue_entries(conn, &event, cutoff_ms, HEAL_CHUNK).await?;
        if overdue.is_empty() || !is_drained(&mut drained, consumer, &counters.topic).await? {
            continue;
        }
        let healed = heal_entries(writer.store(), conn, &event, cutoff_ms, overdue).await?;
        if healed.healed > 0 || healed.written > 0 {
            tracing::warn!(event = %event, healed = healed.healed, marked_written = healed.written, "settled entries issued but never written");
        }
    }
    Ok(())
}

fn export(metrics: &Metrics, event: &str, counters: &EventCounters) {
    let label = EventLabel { event: event.to_owned() };
    metrics.event_issued.get_or_create(&label).set(counters.issued);
    metrics.event_persisted.get_or_create(&label).set(counters.persisted);
    metrics.event_unwritten.get_or_create(&label).set(counters.unwritten);
    metrics.event_healed.get_or_create(&label).set(counters.healed);
    metrics.event_recovering.get_or_create(&label).set(i64::from(counters.recovering));
}

/// Whether the group has committed every record of `topic`, asked once per pass.
async fn is_drained(cache: &mut HashMap<String, bool>, consumer: &Arc<GroupConsumer>, topic: &str) -> Result<bool, RecoveryError> {
    if let Some(known) = cache.get(topic) {
        return Ok(*known);
    }
    let probe = consumer.clone();
    let name = topic.to_owned();
    let drained = tokio::task::spawn_blocking(move || topic_drained(&probe, &name, Duration::from_secs(5))).await??;
    cache.insert(topic.to_owned(), drained);
    Ok(drained)
}

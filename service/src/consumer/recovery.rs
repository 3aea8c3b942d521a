//! Restoring an event's Redis state from SQL, the source of truth, after Redis lost it.
//!
//! The operator writes a lost configuration back marked `recovering` (the gate answers 503
//! meanwhile) and lists the event for restore. The consumer, which owns SQL, restores the
//! counter, the users, the free slots and `persisted` once every record already on the
//! topic is written, then clears the mark.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use coupon_core::event::EventId;
use coupon_core::kafka::KafkaError;
use coupon_core::redis::keyspace::{self, RestoreAnswer, RestoredState};
use coupon_core::redis::{ConnectionManager, RedisError};

use super::kafka::{topic_drained, GroupConsumer};
use crate::sql::Store;

/// Why a restore pass stopped; retried on the next tick.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("Redis: {0}")]
    Redis(#[from] RedisError),
    #[error("SQL: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("drain check did not finish: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// The state to restore, from the event's rows `(user, slot)`.
pub fn state_from_rows(rows: Vec<(String, i64)>) -> RestoredState {
    let count = rows.iter().map(|(_, slot)| *slot).max().unwrap_or(0);
    let taken: BTreeSet<i64> = rows.iter().map(|(_, slot)| *slot).collect();
    let free = (1..=count).filter(|slot| !taken.contains(slot)).collect();
    RestoredState { count, persisted: rows.len() as i64, free, users: rows.into_iter().map(|(user, _)| user).collect() }
}

/// One pass over the events marked recovering: restores those whose topic is drained.
/// Returns the events restored.
pub async fn restore_drained(
    store: &Store,
    conn: &mut ConnectionManager,
    consumer: Arc<GroupConsumer>,
    settle: Duration,
) -> Result<Vec<EventId>, RecoveryError> {
    let mut restored = Vec::new();
    for name in keyspace::recovering_events(conn).await? {
        let Ok(event) = name.parse::<EventId>() else {
            keyspace::unmark_recovering(conn, &name).await?;
            continue;
        };
        let Some(topic) = keyspace::topic(conn, &event).await? else { continue };
        let probe = consumer.clone();
        if !tokio::task::spawn_blocking(move || topic_drained(&probe, &topic, Duration::from_secs(5))).await?? {
            continue;
        }
        let state = state_from_rows(store.coupons(&name).await?);
        match keyspace::restore(conn, &event, &state, settle).await? {
            RestoreAnswer::Restored => {
                keyspace::unmark_recovering(conn, &name).await?;
                tracing::warn!(event = %event, count = state.count, users = state.users.len(), free = state.free.len(), "restored the event's Redis state from SQL");
                restored.push(event);
            }
            RestoreAnswer::NotRecovering => keyspace::unmark_recovering(conn, &name).await?,
            RestoreAnswer::TooEarly => {}
        }
    }
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_is_the_highest_written_slot_and_gaps_become_free() {
        let rows = vec![("a".to_owned(), 1), ("b".to_owned(), 2), ("c".to_owned(), 5)];
        assert_eq!(
            state_from_rows(rows),
            RestoredState { count: 5, persisted: 3, free: vec![3, 4], users: vec!["a".into(), "b".into(), "c".into()] }
        );
        assert_eq!(state_from_rows(vec![]), RestoredState::default());
    }
}

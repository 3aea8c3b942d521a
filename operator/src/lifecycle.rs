//! Pure decisions about an event's Kafka topic when the event is deleted.
//!
//! A topic is shared data: other events may write to it (every event defaults to
//! `coupon_create`, the consumer's topic), and records not yet written to SQL are coupons
//! users were promised. So `onDelete: Delete` deletes the topic only when all of these hold;
//! otherwise the topic is kept and a Warning says why.

use crate::crd::CouponEventSpec;

/// The field of an accepted spec that an edit may not change (`None`: the edit keeps them):
/// a new topic would split the event's records across two topics, a topic's partitions
/// are fixed when it is created, and users are assigned to shards by their number. The CRD refuses both too (transition rules).
pub fn changed_immutable(accepted: &CouponEventSpec, edited: &CouponEventSpec) -> Option<String> {
    if accepted.topic != edited.topic {
        return Some(format!("topic cannot change from {} to {}", accepted.topic, edited.topic));
    }
    if accepted.partitions != edited.partitions {
        return Some(format!("partitions cannot change from {} to {}", accepted.partitions, edited.partitions));
    }
    if accepted.shards != edited.shards {
        return Some(format!("shards cannot change from {} to {}: users are assigned to shards by it", accepted.shards, edited.shards));
    }
    None
}

/// Why a topic is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeepTopic {
    /// The topic existed before the event: the operator does not own it.
    NotCreatedByOperator,
    /// Another CouponEvent (`namespace/name`) uses the same topic.
    SharedWith(String),
    /// Coupons issued but not yet written to SQL (`issued - persisted` of them).
    NotDrained(i64),
}

impl std::fmt::Display for KeepTopic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotCreatedByOperator => write!(f, "the topic existed before the event, so the operator does not delete it"),
            Self::SharedWith(other) => write!(f, "CouponEvent {other} uses the same topic"),
            Self::NotDrained(left) => write!(f, "{left} issued coupons are not written to SQL yet"),
        }
    }
}

/// Whether the topic of an event being deleted with `onDelete: Delete` may be deleted.
/// `others_on_topic`: other CouponEvents (deleting or not) that name the same topic.
pub fn topic_deletion(created_by_operator: bool, others_on_topic: &[String], issued: i64, persisted: i64) -> Result<(), KeepTopic> {
    if !created_by_operator {
        return Err(KeepTopic::NotCreatedByOperator);
    }
    if let Some(other) = others_on_topic.first() {
        return Err(KeepTopic::SharedWith(other.clone()));
    }
    if persisted < issued {
        return Err(KeepTopic::NotDrained(issued - persisted));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_and_partitions_are_immutable() {
        let accepted: CouponEventSpec = serde_json::from_value(serde_json::json!({
            "limit": 10, "topic": "a", "partitions": 3,
            "schedule": {"start": "2026-11-27T10:00:00Z", "end": "2026-11-27T10:30:00Z"},
            "api": {"deployment": "coupon-api", "replicas": 2},
            "consumer": {"deployment": "coupon-consumer", "replicas": 1}
        }))
        .unwrap();
        assert_eq!(changed_immutable(&accepted, &CouponEventSpec { limit: 20, ..accepted.clone() }), None);
        assert!(changed_immutable(&accepted, &CouponEventSpec { topic: "b".into(), ..accepted.clone() }).unwrap().contains("topic"));
        assert!(changed_immutable(&accepted, &CouponEventSpec { partitions: 6, ..accepted.clone() }).unwrap().contains("partitions"));
        assert!(changed_immutable(&accepted, &CouponEventSpec { shards: 3, ..accepted.clone() }).unwrap().contains("shards"));
    }

    #[test]
    fn only_an_owned_unshared_drained_topic_is_deleted() {
        assert_eq!(topic_deletion(true, &[], 10, 10), Ok(()));
        assert_eq!(topic_deletion(true, &[], 0, 0), Ok(()));
        assert_eq!(topic_deletion(false, &[], 10, 10), Err(KeepTopic::NotCreatedByOperator));
        assert_eq!(topic_deletion(true, &["shop/other".into()], 10, 10), Err(KeepTopic::SharedWith("shop/other".into())));
        assert_eq!(topic_deletion(true, &[], 10, 7), Err(KeepTopic::NotDrained(3)));
        // The first reason that applies is reported.
        assert_eq!(topic_deletion(false, &["shop/other".into()], 10, 7), Err(KeepTopic::NotCreatedByOperator));
    }
}

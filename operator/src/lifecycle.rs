//! Pure decisions about an event's Kafka topic when the event is deleted.
//!
//! A topic is shared data: other events may write to it (every event defaults to
//! `coupon_create`, the consumer's topic), also events of another release with its own Redis
//! on the same broker, which this operator cannot see. Records not yet written to SQL are
//! coupons users were promised. So `onDelete: Delete` deletes the topic only when it is
//! provably this event's alone: marked so in the spec (`exclusiveTopic`), not the default
//! topic, created by the operator for this event (recorded where pruning cannot drop it), used
//! by no other event the operator can see, and drained. Otherwise the topic is kept and a
//! Warning says why.

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
    if accepted.event_id != edited.event_id {
        return Some(format!(
            "eventId cannot change from {:?} to {:?}: the sale is keyed by it",
            accepted.event_id.as_deref().unwrap_or("(none)"),
            edited.event_id.as_deref().unwrap_or("(none)")
        ));
    }
    if accepted.shards != edited.shards {
        return Some(format!("shards cannot change from {} to {}: users are assigned to shards by it", accepted.shards, edited.shards));
    }
    None
}

/// The topic every event uses unless it names another: never deleted.
pub const DEFAULT_TOPIC: &str = "coupon_create";

/// Why a topic is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeepTopic {
    /// The spec does not say the topic is this event's alone: another release with its own
    /// Redis on the same broker may sell on it, unseen by this operator.
    NotExclusive,
    /// The default topic is everyone's.
    DefaultTopic,
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
            Self::NotExclusive => write!(
                f,
                "spec.exclusiveTopic is not set: another release on the same broker may use the topic, so the operator does not delete it"
            ),
            Self::DefaultTopic => write!(f, "the default topic {DEFAULT_TOPIC} is shared by every event that names no other"),
            Self::NotCreatedByOperator => write!(f, "the topic existed before the event, so the operator does not delete it"),
            Self::SharedWith(other) => write!(f, "CouponEvent {other} uses the same topic"),
            Self::NotDrained(left) => write!(f, "{left} issued coupons are not written to SQL yet"),
        }
    }
}

/// What decides whether a deleted event's topic goes.
#[derive(Clone, Debug, Default)]
pub struct TopicUse<'a> {
    pub topic: &'a str,
    /// `spec.exclusiveTopic` of the spec in effect.
    pub exclusive: bool,
    /// The operator created this topic for this event (its record of that).
    pub created_by_operator: bool,
    /// Other CouponEvents (deleting or not) the operator sees naming the same topic.
    pub others_on_topic: &'a [String],
    pub issued: i64,
    pub persisted: i64,
}

/// Whether the topic of an event being deleted with `onDelete: Delete` may be deleted: the
/// first reason to keep it, if any.
pub fn topic_deletion(topic: &TopicUse<'_>) -> Result<(), KeepTopic> {
    let TopicUse { topic, exclusive, created_by_operator, others_on_topic, issued, persisted } = *topic;
    if topic == DEFAULT_TOPIC {
        return Err(KeepTopic::DefaultTopic);
    }
    if !exclusive {
        return Err(KeepTopic::NotExclusive);
    }
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
    fn only_an_exclusive_owned_unshared_drained_topic_is_deleted() {
        let shared = ["shop/other".to_owned()];
        let exclusive =
            TopicUse { topic: "sale-2026", exclusive: true, created_by_operator: true, issued: 10, persisted: 10, ..Default::default() };
        assert_eq!(topic_deletion(&exclusive), Ok(()));
        assert_eq!(topic_deletion(&TopicUse { issued: 0, persisted: 0, ..exclusive.clone() }), Ok(()));
        assert_eq!(topic_deletion(&TopicUse { exclusive: false, ..exclusive.clone() }), Err(KeepTopic::NotExclusive));
        assert_eq!(topic_deletion(&TopicUse { topic: DEFAULT_TOPIC, ..exclusive.clone() }), Err(KeepTopic::DefaultTopic));
        assert_eq!(topic_deletion(&TopicUse { created_by_operator: false, ..exclusive.clone() }), Err(KeepTopic::NotCreatedByOperator));
        assert_eq!(
            topic_deletion(&TopicUse { others_on_topic: &shared, ..exclusive.clone() }),
            Err(KeepTopic::SharedWith("shop/other".into()))
        );
        assert_eq!(topic_deletion(&TopicUse { persisted: 7, ..exclusive.clone() }), Err(KeepTopic::NotDrained(3)));
        // The first reason that applies is reported.
        let everything = TopicUse { created_by_operator: false, others_on_topic: &shared, persisted: 7, ..exclusive.clone() };
        assert_eq!(topic_deletion(&everything), Err(KeepTopic::NotCreatedByOperator));
    }
}
